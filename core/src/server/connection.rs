//! One server-side physical connection: a server-role mux session plus the codec work, translating
//! between frames and the engine's typed inputs and outputs.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use uuid::Uuid;

use super::{EngineInput, EngineOutput, INPUT_WINDOW};
use crate::mux::{MuxError, MuxEvent, MuxSession, StreamInput, TimeoutReason};
use crate::stream::StreamId;
use crate::time::Millis;
use crate::wire::{Codec, MessageKind};

#[derive(Debug)]
struct ConnStream {
    store: Uuid,
    /// Whether the request (first message) was forwarded.
    opened: bool,
    /// How later messages decode; `None` = the operation reads nothing more (they are dropped).
    inbound: Option<MessageKind>,
    /// Messages that may still be forwarded before the engine acknowledges more.
    window: u32,
}

/// A server connection; see the [module](super) docs for the flow.
///
/// Driver contract: feed frames with [`handle_frame`](Self::handle_frame), engine outputs for this
/// connection with [`handle_engine`](Self::handle_engine), and timeouts; after each input forward every
/// [`poll_engine_input`](Self::poll_engine_input) to the engine and write
/// [`poll_transmit`](Self::poll_transmit) frames whenever the socket accepts them.
pub struct ServerConnection {
    conn: u64,
    mux: MuxSession,
    streams: BTreeMap<Uuid, ConnStream>,
    to_engine: VecDeque<EngineInput>,
    shutdown: Option<String>,
}

impl ServerConnection {
    /// Wraps a server-role mux session; `conn` is the driver's id for this connection.
    pub fn new(conn: u64, mux: MuxSession) -> Self {
        Self { conn, mux, streams: BTreeMap::new(), to_engine: VecDeque::new(), shutdown: None }
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.conn
    }

    /// The codec of the connection.
    pub fn codec(&self) -> Codec {
        self.mux.codec()
    }

    /// The mux session (read-only: counters for metrics and tests).
    pub fn mux(&self) -> &MuxSession {
        &self.mux
    }

    /// Why the connection ended, once it has (the adapter flushes pending transmits, then closes).
    pub fn shutdown_reason(&self) -> Option<&str> {
        self.shutdown.as_deref()
    }

    fn stream_id(&self, channel: Uuid) -> StreamId {
        StreamId { conn: self.conn, channel }
    }

    /// A frame arrived.
    pub fn handle_frame(&mut self, now: Millis, bytes: &[u8]) {
        self.mux.handle_frame(now, bytes);
        self.process();
    }

    /// Timers are due.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.mux.handle_timeout(now);
        self.process();
    }

    /// The socket closed or failed.
    pub fn handle_transport_closed(&mut self, now: Millis, reason: &str) {
        self.mux.handle_transport_closed(now, reason);
        self.process();
    }

    /// Closes the connection (server shutdown): a `close` frame, every stream aborted.
    pub fn shutdown(&mut self, now: Millis, reason: &str) {
        self.mux.shutdown(now, reason);
        self.process();
    }

    /// An engine output addressed to this connection.
    pub fn handle_engine(&mut self, now: Millis, output: EngineOutput) {
        let channel = output.stream().channel;
        match output {
            EngineOutput::Send { message, .. } => {
                if !self.streams.contains_key(&channel) {
                    return;
                }
                let payload = self.mux.codec().encode_message(&message);
                let charge = message.footprint() as u64;
                match self.mux.send_charged(now, channel, payload, charge) {
                    Ok(()) => {}
                    Err(MuxError::PayloadTooLarge { .. }) => {
                        // Go: Encode fails with "muxer payload too large" and the operation closes with it.
                        let _ = self.mux.close_send(now, channel, Some("muxer payload too large"));
                        self.mux.release(channel);
                        self.streams.remove(&channel);
                        self.to_engine.push_back(EngineInput::Aborted { stream: self.stream_id(channel) });
                    }
                    Err(_) => {}
                }
            }
            EngineOutput::Close { error, .. } => {
                if self.streams.remove(&channel).is_some() {
                    let _ = self.mux.close_send(now, channel, error.as_deref());
                    self.mux.release(channel);
                }
            }
            EngineOutput::Reject { error, .. } => {
                if self.streams.remove(&channel).is_some() {
                    self.mux.reject(now, channel, &error);
                }
            }
            EngineOutput::InputCredit { messages, .. } => {
                if let Some(s) = self.streams.get_mut(&channel) {
                    s.window = s.window.saturating_add(messages);
                    self.pump(channel);
                }
            }
        }
        self.process();
    }

    /// Drains the mux's events into engine inputs.
    fn process(&mut self) {
        while let Some(event) = self.mux.poll_event() {
            match event {
                MuxEvent::Opened { channel, store_id } => {
                    self.streams.insert(
                        channel,
                        ConnStream { store: store_id, opened: false, inbound: None, window: 1 },
                    );
                }
                MuxEvent::Readable { channel } => self.pump(channel),
                MuxEvent::Sent { channel, frames, charge } => {
                    if self.streams.contains_key(&channel) {
                        let stream = self.stream_id(channel);
                        self.to_engine.push_back(EngineInput::Credit { stream, frames, bytes: charge });
                    }
                }
                MuxEvent::Aborted { channel, .. } => {
                    if self.streams.remove(&channel).is_some() {
                        self.to_engine.push_back(EngineInput::Aborted { stream: self.stream_id(channel) });
                    }
                }
                MuxEvent::Shutdown { reason } => {
                    for channel in core::mem::take(&mut self.streams).into_keys() {
                        self.to_engine.push_back(EngineInput::Aborted { stream: self.stream_id(channel) });
                    }
                    self.shutdown = Some(reason);
                }
            }
        }
    }

    /// Forwards a stream's queued items while its window allows.
    fn pump(&mut self, channel: Uuid) {
        let stream = self.stream_id(channel);
        let codec = self.mux.codec();
        loop {
            let Some(state) = self.streams.get_mut(&channel) else { return };
            if state.window == 0 {
                return;
            }
            let Some(item) = self.mux.recv(channel) else { return };
            match item {
                StreamInput::End(end) => self.to_engine.push_back(EngineInput::End { stream, end }),
                StreamInput::Payload(bytes) if !state.opened => {
                    state.opened = true;
                    state.window = INPUT_WINDOW;
                    let request = match codec.decode_message(MessageKind::Envelope, &bytes) {
                        Ok(crate::wire::Message::Envelope(env)) => {
                            state.inbound = env.clone().into_request().ok().and_then(|r| r.inbound_kind());
                            Ok(env)
                        }
                        Ok(_) => Err(String::from("invalid envelope")),
                        Err(e) => Err(format!("{e}")),
                    };
                    let store = state.store;
                    self.to_engine.push_back(EngineInput::Open { stream, store, request });
                }
                StreamInput::Payload(bytes) => {
                    // Operations that read nothing after their request never see more data (Go never
                    // reads it either).
                    let Some(kind) = state.inbound else { continue };
                    state.window -= 1;
                    let input = match codec.decode_message(kind, &bytes) {
                        Ok(message) => EngineInput::Message { stream, message },
                        Err(e) => EngineInput::Invalid { stream, error: format!("{e}") },
                    };
                    self.to_engine.push_back(input);
                }
            }
        }
    }

    /// The next input for the engine.
    pub fn poll_engine_input(&mut self) -> Option<EngineInput> {
        self.to_engine.pop_front()
    }

    /// The next encoded frame to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let frame = self.mux.poll_transmit();
        // Taking frames produces `Sent` credit events.
        self.process();
        frame
    }

    /// Whether frames are waiting to be written.
    pub fn has_transmit(&self) -> bool {
        self.mux.has_transmit()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due; `now`-ish while engine inputs are queued.
    pub fn poll_timeout(&self) -> Option<(Millis, TimeoutReason)> {
        self.mux.poll_timeout()
    }

    /// Whether engine inputs are queued.
    pub fn has_engine_input(&self) -> bool {
        !self.to_engine.is_empty()
    }

    /// Number of open logical streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}
