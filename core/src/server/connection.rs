//! One server-side physical connection: a server-role mux session plus the codec work, translating
//! between frames and the engine's typed inputs and outputs, within the connection's memory budget
//! (see [`ServerConnection`]).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use uuid::Uuid;

use super::{EngineInput, EngineOutput, INPUT_WINDOW};
use crate::mux::{MuxError, MuxEvent, MuxSession, StreamInput, TimeoutReason};
use crate::stream::{EndReason, StreamId};
use crate::time::Millis;
use crate::wire::{Codec, MessageKind};

/// Requests a connection may have forwarded to the engine and not yet seen started: a burst of new
/// streams cannot make the engine produce more first answers at once than this many.
pub const MAX_STARTING: usize = 16;

/// Default [`ConnectionConfig::memory_budget`]: 64 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;

/// Tunables of a [`ServerConnection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Bytes the server may hold for the connection (see [`ServerConnection`]); at least twice the
    /// largest frame is sensible, so that one frame of each direction always fits.
    pub memory_budget: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self { memory_budget: DEFAULT_MEMORY_BUDGET }
    }
}

#[derive(Debug)]
struct ConnStream {
    store: Uuid,
    /// Whether the request (first message) was forwarded.
    opened: bool,
    /// How later messages decode; `None` = the operation reads nothing more (they are dropped).
    inbound: Option<MessageKind>,
    /// Messages that may still be forwarded before the engine acknowledges more.
    window: u32,
    /// Footprint of the messages forwarded to the engine and not yet released.
    input_held: u64,
    /// Send credit (frames, bytes) taken by the transport while the output was over half the budget,
    /// returned once it is not.
    deferred: (u32, u64),
    /// A [`EngineInput::Pressure`] was sent and no input was released since.
    pressured: bool,
    /// The request was forwarded and the engine has not reported it started yet.
    starting: bool,
}

impl ConnStream {
    fn new(store: Uuid) -> Self {
        Self {
            store,
            opened: false,
            inbound: None,
            window: 1,
            input_held: 0,
            deferred: (0, 0),
            pressured: false,
            starting: false,
        }
    }
}

/// A server connection.
///
/// # Memory budget
///
/// Everything the server holds for a connection is charged to one budget ([`ConnectionConfig`],
/// 64 MiB by default), so that no client can make the server hold more for it, whatever it sends or
/// fails to read:
///
/// * **input**: the frames queued in the mux (encoded bytes) and the messages forwarded to the engine
///   and not yet released ([`Message::footprint`](crate::wire::Message::footprint); a producer's
///   records until their chunk is committed). While input holds half the budget, the driver stops
///   reading the socket ([`ServerConnection::wants_input`]), no message is forwarded, and the streams
///   holding input are asked to release it ([`EngineInput::Pressure`]: producers commit the records
///   they have). TCP then slows the peer down; nothing is dropped.
/// * **output**: the frames waiting to be written. While they hold half the budget, the send credit of
///   every stream is held back (the engine stops producing answers) and new requests wait in the mux.
///   Streams already sending can still finish their credit; if the output then holds more than the
///   whole budget, the stream with the most queued bytes is ended with [`EndReason::MemoryBudgetExceeded`] (an
///   `error` frame), and if the bytes belong to streams already finished, the connection is closed
///   with that reason.
///
/// * **requests**: at most [`MAX_STARTING`] requests are forwarded and not yet started by the engine,
///   so a burst of new streams cannot produce a burst of first answers beyond the budget.
///
/// So a connection holds at most about the budget plus half of it plus one frame, and only a peer that
/// does not read its socket can make it end a stream.
///
/// Driver contract: feed frames with [`handle_frame`](Self::handle_frame) (only while
/// [`wants_input`](Self::wants_input)), engine outputs for this connection with
/// [`handle_engine`](Self::handle_engine), and timeouts; after each input forward every
/// [`poll_engine_input`](Self::poll_engine_input) to the engine and write
/// [`poll_transmit`](Self::poll_transmit) frames whenever the socket accepts them.
pub struct ServerConnection {
    conn: u64,
    mux: MuxSession,
    config: ConnectionConfig,
    streams: BTreeMap<Uuid, ConnStream>,
    /// Sum of the streams' `input_held`.
    engine_held: u64,
    /// Streams whose request is forwarded and not started yet (at most [`MAX_STARTING`]).
    starting: usize,
    /// A stream stopped forwarding because of the budget (not its own window): when the budget frees
    /// up, every stream is pumped again. Otherwise only the stream concerned is.
    budget_blocked: bool,
    /// Some stream holds credit taken back while the output was over half the budget.
    credit_deferred: bool,
    /// Inputs for the engine, each with the store of its stream (which shard it goes to).
    to_engine: VecDeque<(Uuid, EngineInput)>,
    shutdown: Option<EndReason>,
    /// When the connection's token expires: the connection is closed with [`EndReason::TokenExpired`] then.
    token_expiry: Option<Millis>,
    /// The latest time an input brought.
    now: Millis,
}

impl ServerConnection {
    /// Wraps a server-role mux session with the default budget; `conn` is the driver's id for this
    /// connection.
    pub fn new(conn: u64, mux: MuxSession) -> Self {
        Self::with_config(conn, mux, ConnectionConfig::default())
    }

    /// Wraps a server-role mux session with `config`.
    pub fn with_config(conn: u64, mux: MuxSession, config: ConnectionConfig) -> Self {
        Self {
            conn,
            mux,
            config,
            streams: BTreeMap::new(),
            engine_held: 0,
            starting: 0,
            budget_blocked: false,
            credit_deferred: false,
            to_engine: VecDeque::new(),
            shutdown: None,
            token_expiry: None,
            now: Millis::ZERO,
        }
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
    pub fn shutdown_reason(&self) -> Option<&EndReason> {
        self.shutdown.as_ref()
    }

    /// Bytes of input held for the connection: frames queued in the mux and messages the engine has
    /// not released.
    pub fn input_held(&self) -> u64 {
        self.mux.queued_inbound_bytes() as u64 + self.engine_held
    }

    /// Bytes of output held for the connection: frames waiting to be written.
    pub fn output_held(&self) -> u64 {
        self.mux.queued_outbound_bytes() as u64
    }

    fn half_budget(&self) -> u64 {
        (self.config.memory_budget / 2) as u64
    }

    /// Whether the driver may read another frame from the socket: the input is within half the budget
    /// and no stream's queue is over its bound. While it is not, the socket is left unread (TCP slows
    /// the peer down) until the engine takes or releases input.
    pub fn wants_input(&self) -> bool {
        self.shutdown.is_none() && self.input_held() < self.half_budget() && !self.mux.is_backlogged()
    }

    fn stream_id(&self, channel: Uuid) -> StreamId {
        StreamId { conn: self.conn, channel }
    }

    /// A frame arrived.
    pub fn handle_frame(&mut self, now: Millis, bytes: &[u8]) {
        self.mux.handle_frame(now, bytes);
        self.process(now);
    }

    /// Closes the connection with [`EndReason::TokenExpired`] at `at` (on the clock of the inputs): no request
    /// outlives the authorization of its connection.
    pub fn set_token_expiry(&mut self, at: Millis) {
        self.token_expiry = Some(at);
    }

    /// Timers are due: the token's expiry, heartbeats, overloaded streams.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.shutdown.is_none() && self.token_expiry.is_some_and(|at| now >= at) {
            self.shutdown(now, EndReason::TokenExpired);
            return;
        }
        self.mux.handle_timeout(now);
        self.process(now);
    }

    /// The socket closed or failed.
    pub fn handle_transport_closed(&mut self, now: Millis, reason: EndReason) {
        self.mux.handle_transport_closed(now, reason);
        self.process(now);
    }

    /// Closes the connection (server shutdown): a `close` frame, every stream aborted.
    pub fn shutdown(&mut self, now: Millis, reason: EndReason) {
        self.mux.shutdown(now, reason);
        self.process(now);
    }

    /// Forgets a stream and the input it held.
    fn forget(&mut self, channel: Uuid) -> Option<ConnStream> {
        let stream = self.streams.remove(&channel)?;
        self.engine_held = self.engine_held.saturating_sub(stream.input_held);
        if stream.starting {
            self.starting -= 1;
        }
        Some(stream)
    }

    /// An engine output addressed to this connection.
    pub fn handle_engine(&mut self, now: Millis, output: EngineOutput) {
        let channel = output.stream().channel;
        match output {
            EngineOutput::Send { message, charge, .. } => {
                if !self.streams.contains_key(&channel) {
                    return;
                }
                let payload = self.mux.codec().encode_message(&message);
                match self.mux.send_charged(now, channel, payload, charge) {
                    Ok(()) => {}
                    Err(MuxError::PayloadTooLarge { .. }) => {
                        // Go: Encode fails with "muxer payload too large" and the operation closes with it.
                        let text = EndReason::PayloadTooLarge.to_string();
                        let _ = self.mux.close_send(now, channel, Some(&text));
                        self.mux.release(channel);
                        if let Some(forgotten) = self.forget(channel) {
                            let stream = self.stream_id(channel);
                            self.to_engine.push_back((forgotten.store, EngineInput::Aborted { stream }));
                        }
                    }
                    Err(_) => {}
                }
            }
            EngineOutput::Close { error, .. } => {
                if self.forget(channel).is_some() {
                    let _ = self.mux.close_send(now, channel, error.map(|e| e.to_string()).as_deref());
                    self.mux.release(channel);
                }
            }
            EngineOutput::Reject { error, .. } => {
                if self.forget(channel).is_some() {
                    self.mux.reject(now, channel, &error);
                }
            }
            EngineOutput::InputCredit { messages, bytes, .. } => {
                if let Some(s) = self.streams.get_mut(&channel) {
                    // The first credit of a stream tells its request started.
                    if core::mem::take(&mut s.starting) {
                        self.starting -= 1;
                    }
                    s.window = s.window.saturating_add(messages);
                    let released = bytes.min(s.input_held);
                    s.input_held -= released;
                    self.engine_held = self.engine_held.saturating_sub(released);
                    if released > 0 {
                        s.pressured = false;
                    }
                }
                self.pump(channel);
                if bytes > 0 {
                    // Released input may unblock the streams waiting for the budget.
                    self.pump_blocked();
                }
            }
        }
        self.process(now);
    }

    /// Drains the mux's events into engine inputs, then applies the budget.
    fn process(&mut self, now: Millis) {
        self.now = self.now.max(now);
        while let Some(event) = self.mux.poll_event() {
            match event {
                MuxEvent::Opened { channel, store_id } => {
                    self.streams.insert(channel, ConnStream::new(store_id));
                }
                MuxEvent::Readable { channel } => self.pump(channel),
                MuxEvent::Sent { channel, frames, charge } => {
                    let over = self.output_held() >= self.half_budget();
                    let stream = self.stream_id(channel);
                    if let Some(s) = self.streams.get_mut(&channel) {
                        if over {
                            s.deferred.0 = s.deferred.0.saturating_add(frames);
                            s.deferred.1 = s.deferred.1.saturating_add(charge);
                            self.credit_deferred = true;
                        } else {
                            let credit = EngineInput::Credit { stream, frames, bytes: charge };
                            self.to_engine.push_back((s.store, credit));
                        }
                    }
                }
                MuxEvent::Aborted { channel, .. } => {
                    if let Some(forgotten) = self.forget(channel) {
                        let stream = self.stream_id(channel);
                        self.to_engine.push_back((forgotten.store, EngineInput::Aborted { stream }));
                    }
                }
                MuxEvent::Shutdown { reason } => {
                    for (channel, forgotten) in core::mem::take(&mut self.streams) {
                        let stream = self.stream_id(channel);
                        self.to_engine.push_back((forgotten.store, EngineInput::Aborted { stream }));
                    }
                    self.engine_held = 0;
                    self.shutdown = Some(reason);
                }
            }
        }
        self.apply_budget(now);
    }

    /// Releases held-back credit once the output is under half the budget, asks streams holding
    /// input to release it while the input is over half, and ends the largest sender while the output
    /// is over the whole budget.
    fn apply_budget(&mut self, now: Millis) {
        if self.shutdown.is_some() {
            return;
        }
        let half = self.half_budget();
        if self.credit_deferred && self.output_held() < half {
            self.credit_deferred = false;
            for (channel, s) in &mut self.streams {
                let (frames, bytes) = core::mem::take(&mut s.deferred);
                if frames > 0 || bytes > 0 {
                    let stream = StreamId { conn: self.conn, channel: *channel };
                    self.to_engine.push_back((s.store, EngineInput::Credit { stream, frames, bytes }));
                }
            }
        }
        if self.output_held() < half {
            // New requests may have been waiting for the output to drain.
            self.pump_blocked();
        }
        if self.input_held() >= half {
            for (channel, s) in &mut self.streams {
                if s.input_held > 0 && !s.pressured {
                    s.pressured = true;
                    let stream = StreamId { conn: self.conn, channel: *channel };
                    self.to_engine.push_back((s.store, EngineInput::Pressure { stream }));
                }
            }
        }
        while self.shutdown.is_none() && self.output_held() > self.config.memory_budget as u64 {
            match self.mux.largest_outbound_stream() {
                Some((channel, _)) => {
                    let forgotten = self.forget(channel);
                    self.mux.reject(now, channel, &EndReason::MemoryBudgetExceeded);
                    if let Some(forgotten) = forgotten {
                        let stream = self.stream_id(channel);
                        self.to_engine.push_back((forgotten.store, EngineInput::Aborted { stream }));
                    }
                }
                None => {
                    // What is queued belongs to streams already finished: the peer reads nothing.
                    self.mux.shutdown(now, EndReason::MemoryBudgetExceeded);
                    self.process(now);
                }
            }
        }
    }

    /// Forwards what the streams the budget held back can forward now.
    fn pump_blocked(&mut self) {
        if !core::mem::take(&mut self.budget_blocked) {
            return;
        }
        let channels: Vec<Uuid> = self.streams.keys().copied().collect();
        for channel in channels {
            self.pump(channel);
        }
    }

    /// Forwards a stream's queued items while its window and the budget allow.
    fn pump(&mut self, channel: Uuid) {
        let stream = self.stream_id(channel);
        let codec = self.mux.codec();
        let half = self.half_budget();
        loop {
            // New requests wait while the output is over half the budget, or while enough others
            // have not started yet: their first answers would come on top.
            let opening_blocked = self.output_held() >= half || self.starting >= MAX_STARTING;
            let engine_over = self.engine_held >= half;
            let Some(state) = self.streams.get_mut(&channel) else { return };
            if state.window == 0 {
                return;
            }
            if engine_over || (!state.opened && opening_blocked) {
                self.budget_blocked = true;
                return;
            }
            let Some(item) = self.mux.recv(channel) else { return };
            match item {
                StreamInput::End(end) => {
                    self.to_engine.push_back((state.store, EngineInput::End { stream, end }))
                }
                StreamInput::Payload(bytes) if !state.opened => {
                    state.opened = true;
                    state.starting = true;
                    self.starting += 1;
                    state.window = INPUT_WINDOW;
                    let request = match codec.decode_message(MessageKind::Envelope, &bytes) {
                        Ok(crate::wire::Message::Envelope(env)) => {
                            state.inbound = env.inbound_kind();
                            Ok(env)
                        }
                        Ok(_) => Err(String::from("invalid envelope")),
                        Err(e) => Err(format!("{e}")),
                    };
                    // Held until the engine started the request (its store may be opening).
                    let charge =
                        request.as_ref().map_or(0, |env| crate::wire::envelope_footprint(env) as u64);
                    state.input_held += charge;
                    self.engine_held += charge;
                    let store = state.store;
                    self.to_engine.push_back((store, EngineInput::Open { stream, store, request, charge }));
                }
                StreamInput::Payload(bytes) => {
                    // Operations that read nothing after their request never see more data (Go never
                    // reads it either).
                    let Some(kind) = state.inbound else { continue };
                    state.window -= 1;
                    let input = match codec.decode_message_bytes(kind, bytes.into()) {
                        Ok(message) => {
                            let charge = message.footprint() as u64;
                            state.input_held += charge;
                            self.engine_held += charge;
                            EngineInput::Message { stream, message, charge }
                        }
                        Err(e) => EngineInput::Invalid { stream, error: format!("{e}") },
                    };
                    self.to_engine.push_back((state.store, input));
                }
            }
        }
    }

    /// The next input for the engine, with the store of its stream: every input of a stream goes to
    /// the engine (shard) that owns that store ([`shard_of`](super::shard_of)).
    pub fn poll_engine_input(&mut self) -> Option<(Uuid, EngineInput)> {
        self.to_engine.pop_front()
    }

    /// The next encoded frame to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let frame = self.mux.poll_transmit();
        // Taking frames produces `Sent` credit events (and may bring the output under its budget).
        self.process(self.now);
        frame
    }

    /// Whether frames are waiting to be written.
    pub fn has_transmit(&self) -> bool {
        self.mux.has_transmit()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due, and why.
    pub fn poll_timeout(&self) -> Option<(Millis, TimeoutReason)> {
        let mux = self.mux.poll_timeout();
        let expiry =
            self.token_expiry.filter(|_| self.shutdown.is_none()).map(|at| (at, TimeoutReason::TokenExpiry));
        match (mux, expiry) {
            (Some(m), Some(e)) => Some(if e.0 < m.0 { e } else { m }),
            (m, e) => m.or(e),
        }
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
