//! The WebSocket transport: one driver task owns the [`ClientConnection`] (client-role mux and codec)
//! and the socket, dials on demand and redials after the connection is lost.
//!
//! ```text
//!  operations ──commands/signals──▶ driver task ──batches──▶ writer task ──▶ socket
//!            ◀──answers (bounded)──            ◀──frames (bounded)── reader task ◀──┘
//! ```
//!
//! The reader and writer run on their own tasks so that the driver never blocks on the socket: a driver
//! stuck in a write could not read, and two peers both stuck writing would deadlock.
//!
//! # Inbound flow control
//!
//! The driver pulls a stream's answers out of the mux only while the operation's answer channel has
//! room. What it does not pull waits in the mux's per-stream queue. When those queues grow high (half of
//! a stream's bounds for a stalled stream, or half of the connection's byte bound) the driver **stops
//! reading the socket**: the reader task blocks, TCP fills, and the server stops sending, so a slow
//! consumer costs bounded memory rather than the server's `stream receive buffer overloaded`.
//!
//! The trade-off: the socket is shared, so while it is paused every stream of the connection waits for
//! the slow one (head-of-line blocking). To bound that, a pause that lasts longer than
//! [`ClientOptions::stall_timeout`] aborts the stalled streams with `stream receive buffer overloaded`
//! (Go's `close` policy) and reading resumes. Give consumers that may stall for long their own
//! [`Client`](super::Client) (their own connection).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, WeakSender};
use bytes::Bytes;
use futures_core::Stream;
use streamkit_proto::api::Request;
use streamkit_proto::client::{ClientConnection, ClientEvent, ClientItem};
use streamkit_proto::mux::MuxError;
use streamkit_proto::stream::EndReason;
use streamkit_proto::time::Millis;
use streamkit_proto::wire::Codec;
use uuid::Uuid;

use super::error::{Error, ErrorKind};
use super::retry::random_seed;
use super::stream::{Command, DriverStream, OpStream, Signal, end_result, new_stream};
use super::{ClientOptions, TokenSource};
use crate::clock::MonotonicClock;
use crate::runtime::{JoinHandle, Runtime, RuntimeExt};
use crate::ws::{DialOptions, WsError, dial};

/// Frames the reader task reads ahead of the driver.
const READ_AHEAD: usize = 16;
/// Batches handed to the writer task and not yet written.
const WRITE_QUEUE: usize = 4;
/// A batch is closed at this many bytes or frames.
const BATCH_BYTES: usize = 256 * 1024;
const BATCH_FRAMES: usize = 512;
/// Opens that arrive within this window after a failed dial get its error instead of dialing again, so
/// a burst of operations costs one dial; the operations' own backoff spaces their retries.
const DIAL_DEDUP: Duration = Duration::from_millis(50);
/// How long closing waits for queued frames and the close frame to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bounds the number of frames handled per wake-up, so signals and commands are not starved.
const FRAMES_PER_WAKE: usize = 64;

/// Starts the socket driver; returns its command queue. Nothing is dialed until a `Connect` command or
/// the first operation.
pub(crate) fn spawn_driver(
    runtime: Arc<dyn Runtime>,
    url: String,
    tokens: Arc<dyn TokenSource>,
    options: ClientOptions,
) -> Sender<Command> {
    let (commands, commands_rx) = async_channel::bounded(1024);
    let (signals, signals_rx) = async_channel::unbounded();
    let driver = Driver {
        runtime: runtime.clone(),
        url,
        tokens,
        options,
        clock: MonotonicClock::new(),
        commands: commands.downgrade(),
        signals,
        streams: HashMap::new(),
        stalled: HashSet::new(),
        live: None,
        last_failure: None,
        closed: false,
        connected_before: false,
        next_health_check: None,
    };
    runtime.spawn(driver.run(commands_rx, signals_rx)).detach();
    commands
}

/// What the reader task hands over: a frame, the end of the connection (`None`), or a read error.
type ReadFrame = Result<Option<Bytes>, WsError>;

/// What exists while a connection is up.
struct Live {
    conn: ClientConnection,
    /// Receivers are boxed: async-channel receivers are `!Unpin` while they wait.
    frames: Pin<Box<Receiver<ReadFrame>>>,
    writer: Sender<Vec<Vec<u8>>>,
    acks: Pin<Box<Receiver<Result<(), String>>>>,
    in_flight: usize,
    paused_since: Option<Instant>,
    shutdown: bool,
    reader: JoinHandle<()>,
    /// Closes when the writer task has written everything and closed the socket.
    writer_done: Receiver<()>,
}

impl Live {
    fn is_paused(&self) -> bool {
        self.paused_since.is_some()
    }
}

struct Driver {
    runtime: Arc<dyn Runtime>,
    url: String,
    tokens: Arc<dyn TokenSource>,
    options: ClientOptions,
    /// The connection's timers (heartbeats, idle timeout) run on a monotonic clock.
    clock: MonotonicClock,
    /// Weak, so the driver ends once every client handle and operation is gone.
    commands: WeakSender<Command>,
    signals: Sender<Signal>,
    streams: HashMap<Uuid, DriverStream>,
    /// Streams whose answer channel was full while answers waited in the mux.
    stalled: HashSet<Uuid>,
    live: Option<Live>,
    last_failure: Option<(Instant, Error)>,
    closed: bool,
    /// Whether a connection was ever up (a later one is a reconnect, for the hook).
    connected_before: bool,
    /// When the health check next looks at the connection ([`ClientOptions::health_check`]).
    next_health_check: Option<Instant>,
}

enum Wake {
    Signal(Signal),
    Ack(Option<Result<(), String>>),
    Frame(Option<ReadFrame>),
    Command(Option<Command>),
    Timer,
}

impl Driver {
    async fn run(mut self, commands: Receiver<Command>, signals: Receiver<Signal>) {
        let mut commands = Box::pin(commands);
        let mut signals = Box::pin(signals);
        let mut timer = self.runtime.sleep(Duration::from_secs(3600));
        loop {
            let deadline = self.deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            timer.as_mut().reset(deadline);
            let wake = std::future::poll_fn(|cx| {
                if let Poll::Ready(Some(signal)) = signals.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Signal(signal));
                }
                if let Some(live) = self.live.as_mut() {
                    if let Poll::Ready(ack) = live.acks.as_mut().poll_next(cx) {
                        return Poll::Ready(Wake::Ack(ack));
                    }
                    if !live.is_paused()
                        && let Poll::Ready(frame) = live.frames.as_mut().poll_next(cx)
                    {
                        return Poll::Ready(Wake::Frame(frame));
                    }
                }
                if let Poll::Ready(command) = commands.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Command(command));
                }
                if timer.as_mut().poll_elapsed(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Signal(signal) => self.handle_signal(signal),
                Wake::Ack(ack) => self.handle_ack(ack),
                Wake::Frame(frame) => self.handle_frames(frame),
                Wake::Command(Some(command)) => self.handle_command(command).await,
                Wake::Command(None) => {
                    // Every client handle and operation is gone.
                    self.close().await;
                    return;
                }
                Wake::Timer => {
                    self.handle_timer();
                    self.check_health().await;
                }
            }
            self.process();
        }
    }

    /// When the driver must wake up without input: the mux's timer, the end of a pause's grace, or
    /// the next health check.
    fn deadline(&self) -> Option<Instant> {
        let live = self.live.as_ref();
        let mux = live.and_then(|live| live.conn.poll_timeout()).map(|(at, _)| self.clock.instant_of(at));
        let stall = live.and_then(|live| live.paused_since).map(|since| since + self.options.stall_timeout);
        [mux, stall, self.next_health_check].into_iter().flatten().min()
    }

    /// The health check ([`ClientOptions::health_check`]): when it is due and the connection is down
    /// (lost, or never dialed since the last failure), dials again now rather than at the next
    /// operation. A failed dial is reported to the hook and tried again at the next check.
    async fn check_health(&mut self) {
        let Some(interval) = self.options.health_check else { return };
        let due = self.next_health_check.is_none_or(|at| Instant::now() >= at);
        if !due || self.closed {
            return;
        }
        self.next_health_check = Some(Instant::now() + interval);
        if self.live.as_ref().is_none_or(|live| live.shutdown || live.conn.is_shut_down()) {
            self.retire().await;
            // The error went to the hook and the log; operations get their own on their next dial.
            let _ = self.connect().await;
        }
    }

    fn handle_signal(&mut self, signal: Signal) {
        let now = self.clock.now();
        match signal {
            Signal::Resume(channel) => {
                self.stalled.remove(&channel);
                if let Some(live) = self.live.as_mut() {
                    pump(now, &mut live.conn, &mut self.streams, &mut self.stalled, channel);
                }
            }
            Signal::Cancel(channel) => {
                self.stalled.remove(&channel);
                if self.streams.remove(&channel).is_some()
                    && let Some(live) = self.live.as_mut()
                {
                    live.conn.cancel(now, channel, &EndReason::Canceled);
                }
            }
        }
    }

    fn handle_ack(&mut self, ack: Option<Result<(), String>>) {
        let Some(live) = self.live.as_mut() else { return };
        match ack {
            Some(Ok(())) => live.in_flight = live.in_flight.saturating_sub(1),
            Some(Err(error)) => {
                live.conn.handle_transport_closed(self.clock.now(), EndReason::Transport(error))
            }
            None => live.conn.handle_transport_closed(self.clock.now(), EndReason::MuxerClosed),
        }
    }

    fn handle_frames(&mut self, first: Option<ReadFrame>) {
        let mut next = first;
        for round in 1..=FRAMES_PER_WAKE {
            let Some(live) = self.live.as_mut() else { return };
            let now = self.clock.now();
            match next {
                Some(Ok(Some(bytes))) => live.conn.handle_frame(now, &bytes),
                Some(Ok(None)) | None => live.conn.handle_transport_closed(now, EndReason::MuxerClosed),
                Some(Err(error)) => {
                    live.conn.handle_transport_closed(now, EndReason::Transport(error.to_string()))
                }
            }
            self.process();
            let Some(live) = self.live.as_mut() else { return };
            // Only take another frame when this wake-up will handle it.
            if live.is_paused() || round == FRAMES_PER_WAKE {
                return;
            }
            match live.frames.try_recv() {
                Ok(frame) => next = Some(frame),
                Err(_) => return,
            }
        }
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::Open { store, request, reply } => {
                let result = self.open(store, request).await;
                // A caller that went away drops the stream with the reply, which cancels it.
                let _ = reply.send(result);
            }
            Command::Send { channel, message } => {
                let Some(live) = self.live.as_mut() else { return };
                match live.conn.send(self.clock.now(), channel, &message) {
                    Ok(()) => {}
                    Err(MuxError::PayloadTooLarge { .. }) => {
                        // Go fails the Encode with this text; the stream cannot go on without the record.
                        let reason = EndReason::PayloadTooLarge;
                        live.conn.cancel(self.clock.now(), channel, &reason);
                        self.stalled.remove(&channel);
                        if let Some(stream) = self.streams.remove(&channel) {
                            stream.finish(Err(Error::new(ErrorKind::InvalidArgument, reason.to_string())));
                        }
                    }
                    // The stream ended meanwhile; its operation learns it from the stream.
                    Err(_) => {}
                }
            }
            Command::CloseSend { channel, err } => {
                if let Some(live) = self.live.as_mut() {
                    let _ = live.conn.close_send(self.clock.now(), channel, err.as_deref());
                }
            }
            Command::Connect { reply } => {
                let result = if self.closed {
                    Err(Error::closed())
                } else if self.live.as_ref().is_some_and(|live| !live.shutdown && !live.conn.is_shut_down()) {
                    Ok(())
                } else {
                    self.retire().await;
                    self.connect().await
                };
                let _ = reply.send(result);
            }
            Command::Close { done } => {
                self.close().await;
                let _ = done.send(());
            }
        }
    }

    fn handle_timer(&mut self) {
        let now = self.clock.now();
        let stall_timeout = self.options.stall_timeout;
        let Some(live) = self.live.as_mut() else { return };
        live.conn.handle_timeout(now);
        if live.paused_since.is_some_and(|since| since.elapsed() >= stall_timeout) {
            // The slow readers had their grace: abort them so the other streams can move again.
            for channel in std::mem::take(&mut self.stalled) {
                if let Some(stream) = self.streams.remove(&channel) {
                    tracing::warn!(%channel, "client stream aborted: its reader stalled the connection");
                    live.conn.cancel(now, channel, &EndReason::Overloaded);
                    stream.finish(Err(Error::from_stream_end(&EndReason::Overloaded)));
                }
            }
            live.paused_since = None;
        }
    }

    async fn open(&mut self, store: Uuid, request: Request) -> Result<OpStream, Error> {
        if self.closed {
            return Err(Error::closed());
        }
        if self.live.as_ref().is_none_or(|live| live.shutdown || live.conn.is_shut_down()) {
            self.retire().await;
            self.connect().await?;
        }
        let Some(live) = self.live.as_mut() else { return Err(Error::muxer_closed()) };
        let channel = match live.conn.open(self.clock.now(), store, request) {
            Ok(channel) => channel,
            Err(MuxError::ShutDown) => return Err(Error::muxer_closed()),
            Err(e) => return Err(Error::new(ErrorKind::InvalidArgument, e.to_string())),
        };
        let Some(commands) = self.commands.upgrade() else { return Err(Error::closed()) };
        let (driver, op) = new_stream(
            channel,
            self.options.stream_buffer,
            self.options.send_window,
            commands,
            self.signals.clone(),
        );
        self.streams.insert(channel, driver);
        Ok(op)
    }

    /// Dials (unless a dial just failed), and sets the connection up.
    async fn connect(&mut self) -> Result<(), Error> {
        if let Some((at, error)) = &self.last_failure
            && at.elapsed() < DIAL_DEDUP
        {
            return Err(error.clone());
        }
        match self.dial().await {
            Ok(live) => {
                self.last_failure = None;
                self.live = Some(live);
                if std::mem::replace(&mut self.connected_before, true) {
                    self.options.hooks.reconnected();
                }
                if let Some(interval) = self.options.health_check {
                    self.next_health_check = Some(Instant::now() + interval);
                }
                Ok(())
            }
            Err(mut error) => {
                if error.kind() == ErrorKind::Unauthorized && self.options.retry_auth_failures {
                    error = error.into_transient();
                }
                tracing::debug!(url = %self.url, %error, "streamkit dial failed");
                self.options.hooks.dial_failed(&error);
                if let Some(interval) = self.options.health_check {
                    self.next_health_check = Some(Instant::now() + interval);
                }
                self.last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    async fn dial(&mut self) -> Result<Live, Error> {
        let token = self.tokens.token().await?;
        let options = DialOptions::new(token)
            .with_cbor(self.options.codec == Codec::Cbor)
            .with_timeout(self.options.dial_timeout);
        #[cfg(feature = "tls")]
        let options = match &self.options.tls {
            Some(config) => options.with_tls_config(config.clone()),
            None => options,
        };
        let ws = dial(&*self.runtime, &self.url, &options).await?;
        let codec = ws.codec();
        let conn = ClientConnection::new(codec, self.options.mux.clone(), self.clock.now(), random_seed());
        let (mut reader, mut writer) = ws.split();

        let (frames_tx, frames) = async_channel::bounded(READ_AHEAD);
        let reader = self.runtime.spawn(async move {
            loop {
                let frame = reader.recv().await;
                let last = !matches!(frame, Ok(Some(_)));
                if frames_tx.send(frame).await.is_err() || last {
                    break;
                }
            }
        });

        let (writer_tx, batches) = async_channel::bounded::<Vec<Vec<u8>>>(WRITE_QUEUE);
        let (acks_tx, acks) = async_channel::bounded(WRITE_QUEUE + 1);
        let (done_tx, writer_done) = async_channel::bounded::<()>(1);
        let runtime = self.runtime.clone();
        self.runtime
            .spawn(async move {
                let _done = done_tx;
                while let Ok(batch) = batches.recv().await {
                    let mut result = Ok(());
                    for frame in batch {
                        result = writer.feed(frame).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    if result.is_ok() {
                        result = writer.flush().await;
                    }
                    let failed = result.is_err();
                    let _ = acks_tx.send(result.map_err(|e| format!("write failed: {e}"))).await;
                    if failed {
                        return;
                    }
                }
                // The driver let go of the connection: end it properly.
                let _ = runtime.timeout(CLOSE_GRACE, writer.close()).await;
            })
            .detach();
        tracing::debug!(url = %self.url, ?codec, "streamkit client connected");
        Ok(Live {
            conn,
            frames: Box::pin(frames),
            writer: writer_tx,
            acks: Box::pin(acks),
            in_flight: 0,
            paused_since: None,
            shutdown: false,
            reader,
            writer_done,
        })
    }

    /// Drains the connection's events into the operations, hands frames to the writer, updates the pause
    /// state, and lets go of a connection that is over.
    fn process(&mut self) {
        let Some(live) = self.live.as_mut() else { return };
        let now = self.clock.now();
        loop {
            while let Some(event) = live.conn.poll_event() {
                match event {
                    ClientEvent::Readable { channel } => {
                        pump(now, &mut live.conn, &mut self.streams, &mut self.stalled, channel);
                    }
                    ClientEvent::Sent { channel, frames } => {
                        if let Some(stream) = self.streams.get(&channel) {
                            stream.add_credit(frames);
                        }
                    }
                    ClientEvent::Aborted { channel, reason } => {
                        self.stalled.remove(&channel);
                        if let Some(stream) = self.streams.remove(&channel) {
                            stream.finish(Err(Error::from_stream_end(&reason)));
                        }
                    }
                    ClientEvent::Shutdown { reason } => {
                        tracing::debug!(url = %self.url, %reason, "streamkit client connection closed");
                        live.shutdown = true;
                    }
                }
            }
            if live.in_flight < WRITE_QUEUE && live.conn.has_transmit() {
                let mut batch = Vec::new();
                let mut bytes = 0;
                while bytes < BATCH_BYTES && batch.len() < BATCH_FRAMES {
                    let Some(frame) = live.conn.poll_transmit() else { break };
                    bytes += frame.len();
                    batch.push(frame);
                }
                if live.writer.try_send(batch).is_ok() {
                    live.in_flight += 1;
                } else {
                    live.conn.handle_transport_closed(self.clock.now(), EndReason::MuxerClosed);
                }
                // Taking frames produced `Sent` events.
                continue;
            }
            break;
        }
        // Inbound flow control (see the module docs).
        let mux = live.conn.mux();
        let config = mux.config();
        self.stalled.retain(|channel| self.streams.contains_key(channel));
        let over = mux.queued_inbound_bytes() >= config.connection_queue_bytes / 2
            || self.stalled.iter().any(|channel| {
                mux.stream_info(*channel).is_some_and(|info| {
                    info.queued_payloads >= config.stream_queue_messages / 2
                        || info.queued_bytes >= config.stream_queue_bytes / 2
                })
            });
        match (over, live.paused_since) {
            (true, None) => live.paused_since = Some(Instant::now()),
            (false, Some(_)) => live.paused_since = None,
            _ => {}
        }
        if live.shutdown && !live.conn.has_transmit() {
            // Dropping the writer's sender makes it write what it has, then close the socket.
            if let Some(live) = self.live.take() {
                live.reader.abort();
            }
        }
    }

    /// Lets go of a finished connection and waits (briefly) for its writer to finish.
    async fn retire(&mut self) {
        if let Some(live) = self.live.take() {
            live.reader.abort();
            let done = live.writer_done.clone();
            drop(live);
            let _ = self.runtime.timeout(CLOSE_GRACE, done.recv()).await;
        }
    }

    /// Closes the client: every stream fails with `client closed`, the connection is shut down and its
    /// last frames (the `close` frame) are written.
    async fn close(&mut self) {
        self.closed = true;
        let now = self.clock.now();
        let mut writer_done = None;
        if let Some(live) = self.live.as_mut() {
            writer_done = Some(live.writer_done.clone());
            live.conn.shutdown(now, EndReason::ClientClosed);
            // Hand everything to the writer; `process` lets go of the connection once it is drained.
            let deadline = Instant::now() + CLOSE_GRACE;
            loop {
                self.process();
                let Some(live) = self.live.as_mut() else { break };
                if Instant::now() >= deadline {
                    break;
                }
                // The writer queue is full: wait for it to take a batch.
                match self.runtime.timeout(CLOSE_GRACE, live.acks.recv()).await {
                    Ok(Ok(Ok(()))) => live.in_flight = live.in_flight.saturating_sub(1),
                    _ => break,
                }
            }
            self.live = None;
        }
        for (_, stream) in self.streams.drain() {
            stream.finish(Err(Error::closed()));
        }
        self.stalled.clear();
        if let Some(done) = writer_done {
            let _ = self.runtime.timeout(CLOSE_GRACE, done.recv()).await;
        }
    }
}

/// Moves a stream's answers from the mux into its operation while the operation has room.
fn pump(
    now: Millis,
    conn: &mut ClientConnection,
    streams: &mut HashMap<Uuid, DriverStream>,
    stalled: &mut HashSet<Uuid>,
    channel: Uuid,
) {
    loop {
        let Some(stream) = streams.get(&channel) else { return };
        if !stream.has_room() {
            if stream.mark_stalled() {
                continue;
            }
            stalled.insert(channel);
            return;
        }
        let Some(item) = conn.recv(channel) else { return };
        match item {
            ClientItem::Message(message) => stream.deliver(message),
            ClientItem::Invalid(error) => {
                stalled.remove(&channel);
                if let Some(stream) = streams.remove(&channel) {
                    let reason = EndReason::Malformed(error);
                    conn.cancel(now, channel, &reason);
                    stream.finish(Err(Error::from_stream_end(&reason)));
                }
                return;
            }
            ClientItem::End(end) => {
                stalled.remove(&channel);
                if let Some(stream) = streams.remove(&channel) {
                    conn.release(channel);
                    stream.finish(end_result(&end));
                }
                return;
            }
        }
    }
}
