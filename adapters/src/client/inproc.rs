//! The in-process transport: a client that reaches a server's engine in the same process, without
//! sockets or encoding (typed messages both ways), with the same operations as over a socket.
//!
//! One driver task registers as a connection of the engine ([`EngineHandle::register`]) and plays the
//! part a socket connection plays on the server: it forwards requests and messages as
//! [`EngineInput`]s within the engine's input window, returns send credit as the operations take
//! answers, and maps stream ends to the texts a socket client sees (`remote closed stream: X`,
//! `remote error: X`). Like Go's in-process transport, it has no authentication: every store is
//! reachable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Poll;

use async_channel::{Receiver, Sender, WeakSender};
use futures_core::Stream as _;
use streamkit_proto::api::Request;
use streamkit_proto::server::{EngineInput, EngineOutput, INPUT_WINDOW};
use streamkit_proto::stream::{EndReason, StreamEnd, StreamId};
use streamkit_proto::wire::{Message, StreamControl};
use uuid::Uuid;

use super::ClientOptions;
use super::error::Error;
use super::stream::{Command, DriverStream, OpStream, Signal, end_result, new_stream};
use crate::engine::{EngineHandle, RoutedInput};
use crate::runtime::{Runtime, RuntimeExt};

/// Registers with the engine and starts the in-process driver; returns its command queue.
pub(crate) async fn spawn_driver(
    runtime: Arc<dyn Runtime>,
    engine: EngineHandle,
    options: ClientOptions,
) -> Result<Sender<Command>, Error> {
    let (conn, outbox) = engine.register().await.map_err(|_| Error::muxer_closed())?;
    let (commands, commands_rx) = async_channel::bounded(1024);
    let (signals, signals_rx) = async_channel::unbounded();
    let driver = Driver {
        engine,
        conn,
        options,
        commands: commands.downgrade(),
        signals,
        streams: HashMap::new(),
        closed: false,
    };
    runtime.spawn(driver.run(commands_rx, signals_rx, outbox)).detach();
    Ok(commands)
}

/// An answer waiting for room in the operation's channel (at most the engine's send credit of them).
enum Pending {
    /// An answer and what it cost the engine's send credit.
    Message(Message, u64),
    End(Result<(), Error>),
}

struct Stream {
    /// The store of the operation: every input of the stream goes to the engine shard owning it.
    store: Uuid,
    handle: DriverStream,
    pending: VecDeque<Pending>,
}

struct Driver {
    engine: EngineHandle,
    conn: u64,
    options: ClientOptions,
    commands: WeakSender<Command>,
    signals: Sender<Signal>,
    streams: HashMap<Uuid, Stream>,
    closed: bool,
}

enum Wake {
    Signal(Signal),
    Output(Option<Vec<EngineOutput>>),
    Command(Option<Command>),
}

impl Driver {
    async fn run(
        mut self,
        commands: Receiver<Command>,
        signals: Receiver<Signal>,
        outbox: Receiver<Vec<EngineOutput>>,
    ) {
        // Boxed: async-channel receivers are `!Unpin` while they wait.
        let (mut commands, mut signals, mut outbox) =
            (Box::pin(commands), Box::pin(signals), Box::pin(outbox));
        let mut outbox_open = true;
        loop {
            let wake = std::future::poll_fn(|cx| {
                if let Poll::Ready(Some(signal)) = signals.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Signal(signal));
                }
                if outbox_open && let Poll::Ready(output) = outbox.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Output(output));
                }
                if let Poll::Ready(command) = commands.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Command(command));
                }
                Poll::Pending
            })
            .await;
            let mut inputs = Vec::new();
            match wake {
                Wake::Signal(signal) => self.handle_signal(signal, &mut inputs),
                Wake::Output(Some(batch)) => {
                    for output in batch {
                        self.handle_output(output, &mut inputs);
                    }
                    // Take what else is ready before talking to the engine: batching.
                    while let Ok(batch) = outbox.try_recv() {
                        for output in batch {
                            self.handle_output(output, &mut inputs);
                        }
                    }
                }
                Wake::Output(None) => {
                    // The engine stopped (server shut down): like a lost connection.
                    outbox_open = false;
                    for (_, stream) in self.streams.drain() {
                        stream.handle.finish(Err(Error::muxer_closed()));
                    }
                }
                Wake::Command(Some(command)) => self.handle_command(command, &mut inputs).await,
                Wake::Command(None) => {
                    self.close(&mut inputs);
                    let _ = self.engine.send(inputs).await;
                    self.engine.unregister(self.conn).await;
                    return;
                }
            }
            if !inputs.is_empty() && self.engine.send(inputs).await.is_err() {
                outbox_open = false;
                for (_, stream) in self.streams.drain() {
                    stream.handle.finish(Err(Error::muxer_closed()));
                }
            }
        }
    }

    fn stream_id(&self, channel: Uuid) -> StreamId {
        StreamId { conn: self.conn, channel }
    }

    fn handle_signal(&mut self, signal: Signal, inputs: &mut Vec<RoutedInput>) {
        match signal {
            Signal::Resume(channel) => self.pump(channel, inputs),
            Signal::Cancel(channel) => {
                if let Some(removed) = self.streams.remove(&channel) {
                    let stream = self.stream_id(channel);
                    // What a socket client's cancel looks like to the server: `mux::close` with
                    // `context canceled`.
                    let end =
                        StreamEnd::from_control(StreamControl::close_with(EndReason::Canceled.to_string()));
                    inputs.push((removed.store, EngineInput::End { stream, end }));
                    inputs.push((removed.store, EngineInput::Aborted { stream }));
                }
            }
        }
    }

    fn handle_output(&mut self, output: EngineOutput, inputs: &mut Vec<RoutedInput>) {
        let channel = output.stream().channel;
        let Some(stream) = self.streams.get_mut(&channel) else { return };
        match output {
            EngineOutput::Send { message, charge, .. } => {
                stream.pending.push_back(Pending::Message(message, charge));
            }
            // The ends a socket client reads from the same `mux::close` and `mux::error`.
            EngineOutput::Close { error, .. } => {
                let control = StreamControl::close_with(error.map(|e| e.to_string()).unwrap_or_default());
                stream.pending.push_back(Pending::End(end_result(&StreamEnd::from_control(control))));
            }
            EngineOutput::Reject { error, .. } => {
                let control = StreamControl::error(error.to_string());
                stream.pending.push_back(Pending::End(end_result(&StreamEnd::from_control(control))));
            }
            EngineOutput::InputCredit { messages, .. } => stream.handle.add_credit(messages),
        }
        self.pump(channel, inputs);
    }

    /// Hands a stream's answers to its operation while it has room; the engine gets the credit back.
    fn pump(&mut self, channel: Uuid, inputs: &mut Vec<RoutedInput>) {
        let Some(stream) = self.streams.get_mut(&channel) else { return };
        let (mut delivered, mut bytes) = (0u32, 0u64);
        let mut ended = None;
        while let Some(front) = stream.pending.front() {
            if matches!(front, Pending::Message(..)) && !stream.handle.has_room() {
                if stream.handle.mark_stalled() {
                    continue;
                }
                break;
            }
            match stream.pending.pop_front() {
                Some(Pending::Message(message, charge)) => {
                    bytes += charge;
                    stream.handle.deliver(message);
                    delivered += 1;
                }
                Some(Pending::End(end)) => {
                    ended = Some(end);
                    break;
                }
                None => break,
            }
        }
        if delivered > 0 {
            let store = stream.store;
            let credit = EngineInput::Credit { stream: self.stream_id(channel), frames: delivered, bytes };
            inputs.push((store, credit));
        }
        if let Some(end) = ended
            && let Some(stream) = self.streams.remove(&channel)
        {
            stream.handle.finish(end);
        }
    }

    async fn handle_command(&mut self, command: Command, inputs: &mut Vec<RoutedInput>) {
        match command {
            Command::Open { store, request, reply } => {
                let result = self.open(store, request, inputs);
                let _ = reply.send(result);
            }
            Command::Send { channel, message } => {
                if let Some(store) = self.streams.get(&channel).map(|s| s.store) {
                    let stream = self.stream_id(channel);
                    inputs.push((store, EngineInput::Message { stream, message, charge: 0 }));
                }
            }
            Command::CloseSend { channel, err } => {
                if let Some(store) = self.streams.get(&channel).map(|s| s.store) {
                    let end = StreamEnd::from_control(StreamControl::close_with(err.unwrap_or_default()));
                    inputs.push((store, EngineInput::End { stream: self.stream_id(channel), end }));
                }
            }
            Command::Connect { reply } => {
                let _ = reply.send(if self.closed { Err(Error::closed()) } else { Ok(()) });
            }
            Command::Close { done } => {
                self.close(inputs);
                let _ = self.engine.send(std::mem::take(inputs)).await;
                let _ = done.send(());
            }
        }
    }

    fn open(
        &mut self,
        store: Uuid,
        request: Request,
        inputs: &mut Vec<RoutedInput>,
    ) -> Result<OpStream, Error> {
        if self.closed {
            return Err(Error::closed());
        }
        let Some(commands) = self.commands.upgrade() else { return Err(Error::closed()) };
        let mut channel = Uuid::new_v4();
        while self.streams.contains_key(&channel) {
            channel = Uuid::new_v4();
        }
        // The engine accepts INPUT_WINDOW messages of a stream before it acknowledges any.
        let (handle, op) =
            new_stream(channel, self.options.stream_buffer, INPUT_WINDOW, commands, self.signals.clone());
        self.streams.insert(channel, Stream { store, handle, pending: VecDeque::new() });
        let envelope = request.into_envelope();
        // No memory budget here: the operation's own channel bounds what it sends.
        let stream = self.stream_id(channel);
        inputs.push((store, EngineInput::Open { stream, store, request: Ok(envelope), charge: 0 }));
        Ok(op)
    }

    fn close(&mut self, inputs: &mut Vec<RoutedInput>) {
        self.closed = true;
        for (channel, stream) in self.streams.drain() {
            inputs
                .push((stream.store, EngineInput::Aborted { stream: StreamId { conn: self.conn, channel } }));
            stream.handle.finish(Err(Error::closed()));
        }
    }
}
