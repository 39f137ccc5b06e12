//! [`MuxSession`]: the state machine of one physical connection.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use uuid::Uuid;

use super::config::{MAX_QUEUED_CONTROL_FRAMES, MuxConfig, Role};
use super::error::MuxError;
use super::event::{EndReason, MuxEvent, StreamEnd, StreamInput, TimeoutReason};
use super::outbound::{Outbound, Taken};
use super::stream::Stream;
use super::tombstones::Tombstones;
use crate::rand::Rng;
use crate::time::Millis;
use crate::wire::{Codec, ControlType, Frame, StreamControl, WireError};

/// A snapshot of one registered stream, for drivers and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Store the stream was opened for.
    pub store_id: Uuid,
    /// Inbound payloads waiting for `recv`.
    pub queued_payloads: usize,
    /// Bytes of those payloads.
    pub queued_bytes: usize,
    /// The peer ended its side (an `End` was queued).
    pub peer_closed: bool,
    /// Our side is closed (`close_send` was called).
    pub send_closed: bool,
}

/// Running totals of what a session refused, for the driver's metrics (monotonic; read them after an
/// input and subtract the previous reading).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxCounters {
    /// Data frames refused with `access denied` (their store is outside the token's scopes).
    pub denied_frames: u64,
    /// New streams refused with `too many active streams`.
    pub refused_streams: u64,
    /// Streams aborted with `stream receive buffer overloaded`.
    pub overloaded_streams: u64,
}

/// How a shutdown treats the transport.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// We end the connection: flush what is queued, then a `close` frame.
    SendClose,
    /// The peer or the transport ended it: nothing more can be delivered.
    Silent,
}

/// The mux state machine of one physical connection (PROTOCOL.md §2.5–2.9, §3), server or client role.
///
/// Turns inbound frames into per-stream items and events, and application sends into encoded frames.
/// It performs no I/O and reads no clock; see the [module docs](super) for the driver loop. No input
/// makes it panic, and every queue it owns is bounded (the outbound data queues by the application's
/// `Sent` credit).
#[derive(Debug)]
pub struct MuxSession {
    role: Role,
    codec: Codec,
    config: MuxConfig,
    rng: Rng,
    /// Latest time seen; inputs with an earlier `now` are treated as happening at this time.
    now: Millis,
    /// Time of the last inbound frame (writes do not count, as in Go).
    last_activity: Millis,
    /// When the next heartbeat fires; `None` when heartbeats are disabled or the session is over.
    next_heartbeat: Option<Millis>,
    streams: BTreeMap<Uuid, Stream>,
    /// Sum of the queued inbound payload bytes of all streams.
    inbound_bytes: usize,
    /// Streams whose inbound queue is over its bound (waiting policies only), and since when.
    over_bound: BTreeMap<Uuid, Millis>,
    /// Since when the connection's inbound bytes are over their bound (waiting policies only).
    connection_over_since: Option<Millis>,
    tombstones: Tombstones,
    outbound: Outbound,
    events: VecDeque<MuxEvent>,
    /// Data frames (and their charges) taken by `poll_transmit` per stream, not yet reported as `Sent`.
    sent: BTreeMap<Uuid, (u32, u64)>,
    next_generation: u64,
    shut_down: bool,
    counters: MuxCounters,
}

impl MuxSession {
    /// A session for a connection established at `now`. `seed` drives channel ids and heartbeat jitter.
    pub fn new(role: Role, codec: Codec, config: MuxConfig, now: Millis, seed: u64) -> Self {
        let tombstones = Tombstones::new(config.tombstone_capacity, config.tombstone_ttl);
        let mut session = Self {
            role,
            codec,
            config,
            rng: Rng::new(seed),
            now,
            last_activity: now,
            next_heartbeat: None,
            streams: BTreeMap::new(),
            inbound_bytes: 0,
            over_bound: BTreeMap::new(),
            connection_over_since: None,
            tombstones,
            outbound: Outbound::default(),
            events: VecDeque::new(),
            sent: BTreeMap::new(),
            next_generation: 0,
            shut_down: false,
            counters: MuxCounters::default(),
        };
        session.schedule_heartbeat(now);
        session
    }

    /// The codec of the connection.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The role of this end.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The configuration.
    pub fn config(&self) -> &MuxConfig {
        &self.config
    }

    /// Whether the session is over (every later application call fails with [`MuxError::ShutDown`]).
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// Number of registered streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The state of a registered stream.
    pub fn stream_info(&self, channel: Uuid) -> Option<StreamInfo> {
        self.streams.get(&channel).map(|s| StreamInfo {
            store_id: s.store_id,
            queued_payloads: s.queued_payloads(),
            queued_bytes: s.queued_bytes(),
            peer_closed: s.peer_closed,
            send_closed: s.send_closed,
        })
    }

    /// Inbound payload bytes queued over all streams (bounded by `connection_queue_bytes`).
    pub fn queued_inbound_bytes(&self) -> usize {
        self.inbound_bytes
    }

    /// The registered stream with the most bytes of data frames waiting for `poll_transmit`, and how
    /// many.
    pub fn largest_outbound_stream(&self) -> Option<(Uuid, usize)> {
        self.outbound
            .queued_bytes_by_channel()
            .filter(|(channel, bytes)| *bytes > 0 && self.streams.contains_key(channel))
            .max_by_key(|(_, bytes)| *bytes)
    }

    /// With a waiting [`OverloadPolicy`](super::OverloadPolicy): whether a stream's inbound queue, or
    /// the connection's, is over its bound, so the driver must not read more frames until the
    /// application has taken some.
    pub fn is_backlogged(&self) -> bool {
        !self.over_bound.is_empty() || self.inbound_bytes > self.config.connection_queue_bytes
    }

    /// Data frames waiting for `poll_transmit` over all streams (bounded by the application's credit).
    pub fn queued_data_frames(&self) -> usize {
        self.outbound.queued_data_frames()
    }

    /// Bytes of the data and `error` frames waiting for `poll_transmit`: what this connection's
    /// outbound queue holds.
    pub fn queued_outbound_bytes(&self) -> usize {
        self.outbound.queued_bytes()
    }

    /// `error` frames waiting for `poll_transmit` (bounded by
    /// [`MAX_QUEUED_CONTROL_FRAMES`](super::MAX_QUEUED_CONTROL_FRAMES)).
    pub fn queued_error_frames(&self) -> usize {
        self.outbound.queued_errors()
    }

    /// Number of tombstones (bounded by `tombstone_capacity`).
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Whether frames for `channel` are currently dropped by a live tombstone.
    pub fn is_tombstoned(&self, channel: Uuid) -> bool {
        self.tombstones.contains(&channel, self.now)
    }

    /// Time of the last inbound frame.
    pub fn last_activity(&self) -> Millis {
        self.last_activity
    }

    /// What the session refused so far (denied frames, refused and overloaded streams).
    pub fn counters(&self) -> MuxCounters {
        self.counters
    }

    // ---------------------------------------------------------------------------------------------
    // network inputs

    /// One frame read from the socket.
    ///
    /// A frame that does not decode, or is over a size limit, shuts the whole session down (Go
    /// behaviour: the read loop fails). Frames arriving after shutdown are ignored.
    pub fn handle_frame(&mut self, now: Millis, bytes: &[u8]) {
        let now = self.advance(now);
        if self.shut_down {
            return;
        }
        self.last_activity = now;
        let frame = match self.codec.decode_frame(bytes, &self.config.limits) {
            Ok(frame) => frame,
            Err(e) => {
                self.shutdown_inner(decode_failure_reason(e), Teardown::SendClose);
                return;
            }
        };
        match frame.control {
            ControlType::Data => self.on_data_frame(frame),
            ControlType::Error => self.on_error_frame(frame),
            ControlType::Ping => self.outbound.queue_pong(),
            ControlType::Pong => {}
            // The peer has shut its muxer down: answering with our own close would be pointless.
            ControlType::Close => self.shutdown_inner(EndReason::MuxerClosed, Teardown::Silent),
            // Go logs and ignores unknown control types, so newer peers can add some.
            ControlType::Unknown(_) => {}
        }
    }

    /// The deadline from [`poll_timeout`](Self::poll_timeout) passed. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Millis) {
        let now = self.advance(now);
        if self.shut_down {
            return;
        }
        self.tombstones.prune(now);
        self.close_overdue(now);
        let Some(deadline) = self.next_heartbeat else { return };
        if now < deadline {
            return;
        }
        if now.saturating_since(self.last_activity) > self.config.idle_timeout {
            self.shutdown_inner(EndReason::HeartbeatTimeout, Teardown::SendClose);
            return;
        }
        self.outbound.queue_ping();
        self.schedule_heartbeat(now);
    }

    /// The socket is gone: abort every stream with `reason` and shut down without sending anything.
    pub fn handle_transport_closed(&mut self, now: Millis, reason: EndReason) {
        self.advance(now);
        self.shutdown_inner(reason, Teardown::Silent);
    }

    // ---------------------------------------------------------------------------------------------
    // application inputs

    /// Client role: opens a stream to `store_id` under a fresh random v4 channel id and queues
    /// `first_payload` (the request envelope) as its first data frame.
    pub fn open_stream(
        &mut self,
        now: Millis,
        store_id: Uuid,
        first_payload: Vec<u8>,
    ) -> Result<Uuid, MuxError> {
        self.advance(now);
        if self.shut_down {
            return Err(MuxError::ShutDown);
        }
        if self.role.is_server() {
            return Err(MuxError::NotClient);
        }
        self.check_payload(first_payload.len())?;
        let mut channel = self.rng.uuid_v4();
        // 122 random bits: a repeat needs the generator to cycle, but a collision would silently merge
        // two streams, so it is excluded rather than assumed away.
        while self.streams.contains_key(&channel) || channel.is_nil() {
            channel = self.rng.uuid_v4();
        }
        let bytes = self.encode_data(store_id, channel, first_payload)?;
        let generation = self.register(channel, store_id);
        self.outbound.queue_data(channel, generation, 0, bytes);
        Ok(channel)
    }

    /// Queues `payload` as the next data frame of `channel`.
    ///
    /// Allowed after the peer ended its side (Produce answers after the client's half-close); refused
    /// after our own `close_send`. A payload over the limits fails and leaves the stream untouched.
    pub fn send(&mut self, now: Millis, channel: Uuid, payload: Vec<u8>) -> Result<(), MuxError> {
        self.send_charged(now, channel, payload, 0)
    }

    /// [`send`](Self::send), with a `charge` that comes back in the stream's [`MuxEvent::Sent`] once
    /// the frame is taken: applications that count send credit in their own unit (bytes of the
    /// message) get it back exactly.
    pub fn send_charged(
        &mut self,
        now: Millis,
        channel: Uuid,
        payload: Vec<u8>,
        charge: u64,
    ) -> Result<(), MuxError> {
        self.advance(now);
        let (store_id, generation) = self.sendable(channel)?;
        self.check_payload(payload.len())?;
        let bytes = self.encode_data(store_id, channel, payload)?;
        self.outbound.queue_data(channel, generation, charge, bytes);
        Ok(())
    }

    /// Ends our side of `channel` with a `{"type":"mux::close"[,"err":err]}` data frame (an empty `err`
    /// is a clean close). The stream stays registered for receiving until it is released.
    pub fn close_send(&mut self, now: Millis, channel: Uuid, err: Option<&str>) -> Result<(), MuxError> {
        self.advance(now);
        let (store_id, generation) = self.sendable(channel)?;
        let control = match err {
            Some(err) => StreamControl::close_with(err),
            None => StreamControl::close(),
        };
        let bytes = self.encode_data(store_id, channel, control.encode(self.codec))?;
        self.outbound.queue_data(channel, generation, 0, bytes);
        if let Some(stream) = self.streams.get_mut(&channel) {
            stream.send_closed = true;
        }
        Ok(())
    }

    /// Forgets `channel` (Go `CloseLocal`): drops its inbound queue and sends nothing. Frames it already
    /// queued (such as a `mux::close` from `close_send`) are still transmitted. Like Go, no tombstone is
    /// left (PROTOCOL.md §2.6): the channel is free at once, and a later data frame with its id opens a new
    /// stream (a peer may reuse a channel id as soon as it has the close).
    pub fn release(&mut self, channel: Uuid) {
        if self.shut_down {
            return;
        }
        self.remove_stream(channel);
    }

    /// Rejects `channel` (server: e.g. `store unavailable`): queues an `error` control frame
    /// `{"type":"mux::error","err":err}` with the stream's ids, drops the stream and its unsent data, and
    /// tombstones the channel. Unknown channels are ignored.
    pub fn reject(&mut self, now: Millis, channel: Uuid, err: &EndReason) {
        self.advance(now);
        if self.shut_down {
            return;
        }
        if let Some(stream) = self.remove_stream(channel) {
            self.outbound.drop_stream(channel, stream.generation);
            self.tombstones.insert(channel, self.now);
            self.queue_error(stream.store_id, channel, err);
        }
    }

    /// Pops the next inbound item of `channel`; `None` when nothing is queued or the stream is unknown.
    pub fn recv(&mut self, channel: Uuid) -> Option<StreamInput> {
        let stream = self.streams.get_mut(&channel)?;
        let item = stream.pop()?;
        if let StreamInput::Payload(p) = &item {
            self.inbound_bytes -= p.len();
        }
        if !self.over_bound.is_empty() && !self.is_over_bound(channel) {
            self.over_bound.remove(&channel);
        }
        if self.inbound_bytes <= self.config.connection_queue_bytes {
            self.connection_over_since = None;
        }
        Some(item)
    }

    /// Shuts the connection down: queues a `close` frame after what is already queued, aborts every
    /// stream with `reason`, then emits [`MuxEvent::Shutdown`]. Idempotent.
    pub fn shutdown(&mut self, now: Millis, reason: EndReason) {
        self.advance(now);
        self.shutdown_inner(reason, Teardown::SendClose);
    }

    // ---------------------------------------------------------------------------------------------
    // outputs

    /// The next event for the application. Drain until `None` after every input.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        if let Some(event) = self.events.pop_front() {
            if let MuxEvent::Readable { channel } = &event
                && let Some(stream) = self.streams.get_mut(channel)
            {
                stream.readable_pending = false;
            }
            return Some(event);
        }
        let (channel, (frames, charge)) = self.sent.pop_first()?;
        Some(MuxEvent::Sent { channel, frames, charge })
    }

    /// The next encoded frame to write (one WebSocket message; binary for CBOR, text for JSON).
    ///
    /// Pull frames whenever the socket accepts writes and flush once the call returns `None`. Taking data
    /// frames produces [`MuxEvent::Sent`] events, so drain `poll_event` afterwards.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match self.outbound.take(self.codec)? {
            Taken::Control(bytes) => Some(bytes),
            Taken::Data { channel, generation, charge, bytes } => {
                // Frames of a released (or replaced) registration are still written but are nobody's
                // credit any more.
                if self.streams.get(&channel).is_some_and(|s| s.generation == generation) {
                    let (frames, charged) = self.sent.entry(channel).or_insert((0, 0));
                    *frames = frames.saturating_add(1);
                    *charged = charged.saturating_add(charge);
                }
                Some(bytes)
            }
        }
    }

    /// Whether `poll_transmit` would return a frame.
    pub fn has_transmit(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, and why.
    ///
    /// Returns the latest `now` seen while events are waiting in `poll_event`. Pending transmits do *not*
    /// make it return `now`: adapters pull `poll_transmit` whenever the socket accepts writes, and a
    /// socket that does not accept writes must not turn the timer into a busy loop. `None` once the
    /// session is shut down and drained, or when heartbeats are disabled and nothing is pending.
    pub fn poll_timeout(&self) -> Option<(Millis, TimeoutReason)> {
        if !self.events.is_empty() || !self.sent.is_empty() {
            return Some((self.now, TimeoutReason::PendingEvents));
        }
        let heartbeat = self.next_heartbeat.map(|t| (t, TimeoutReason::Heartbeat));
        let overload = self.overload_deadline().map(|t| (t, TimeoutReason::Overload));
        match (heartbeat, overload) {
            (Some(h), Some(o)) => Some(if o.0 < h.0 { o } else { h }),
            (h, o) => h.or(o),
        }
    }

    /// When the first stream (or the connection) that is over its bound runs out of patience.
    fn overload_deadline(&self) -> Option<Millis> {
        let patience = self.config.overload.patience()?;
        let since = self.over_bound.values().copied().chain(self.connection_over_since).min()?;
        Some(since + patience)
    }

    /// With [`OverloadPolicy::WaitThenClose`]: closes the streams that stayed over their bound for
    /// the whole patience, then the largest streams while the connection stayed over its bound as long.
    fn close_overdue(&mut self, now: Millis) {
        let Some(patience) = self.config.overload.patience() else { return };
        let overdue: Vec<Uuid> = self
            .over_bound
            .iter()
            .filter(|(_, since)| now.saturating_since(**since) >= patience)
            .map(|(channel, _)| *channel)
            .collect();
        for channel in overdue {
            self.counters.overloaded_streams += 1;
            self.abort_stream(channel, EndReason::Overloaded);
        }
        if self.connection_over_since.is_some_and(|since| now.saturating_since(since) >= patience) {
            while !self.shut_down && self.inbound_bytes > self.config.connection_queue_bytes {
                let Some(victim) = self.largest_inbound_stream() else { break };
                self.counters.overloaded_streams += 1;
                self.abort_stream(victim, EndReason::Overloaded);
            }
            self.connection_over_since =
                (self.inbound_bytes > self.config.connection_queue_bytes).then_some(now);
        }
    }

    /// The stream with the most queued inbound bytes.
    fn largest_inbound_stream(&self) -> Option<Uuid> {
        self.streams.iter().max_by_key(|(_, s)| s.queued_bytes()).map(|(c, _)| *c)
    }

    // ---------------------------------------------------------------------------------------------
    // internals

    /// Time never goes backwards inside the session (inputs may race in an adapter).
    fn advance(&mut self, now: Millis) -> Millis {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn schedule_heartbeat(&mut self, now: Millis) {
        let interval = self.config.heartbeat_interval;
        if interval == Millis::ZERO {
            self.next_heartbeat = None;
            return;
        }
        let jitter = self.rng.below(self.config.heartbeat_jitter.as_u64());
        // At least 1 ms, so a jitter as large as the interval cannot make the timer spin.
        let wait = interval.as_u64().saturating_sub(jitter).max(1);
        self.next_heartbeat = Some(now + Millis(wait));
    }

    fn check_payload(&self, len: usize) -> Result<(), MuxError> {
        let limit = self.config.limits.max_payload;
        if len > limit {
            return Err(MuxError::PayloadTooLarge { len, limit });
        }
        Ok(())
    }

    /// Encodes a data frame, refusing frames the peer would reject as over `max_frame` (6 MiB of payload
    /// base64-encodes to 8 MiB, so Go's limits alone let such frames through: PROTOCOL.md §2.9 [Go quirk]).
    fn encode_data(&self, store_id: Uuid, channel: Uuid, payload: Vec<u8>) -> Result<Vec<u8>, MuxError> {
        let bytes = self.codec.encode_frame(&Frame::data(store_id, channel, payload));
        let limit = self.config.limits.max_frame;
        if bytes.len() > limit {
            return Err(MuxError::PayloadTooLarge { len: bytes.len(), limit });
        }
        Ok(bytes)
    }

    /// The ids a send on `channel` needs, or why it cannot send.
    fn sendable(&self, channel: Uuid) -> Result<(Uuid, u64), MuxError> {
        if self.shut_down {
            return Err(MuxError::ShutDown);
        }
        let stream = self.streams.get(&channel).ok_or(MuxError::UnknownStream)?;
        if stream.send_closed {
            return Err(MuxError::SendClosed);
        }
        Ok((stream.store_id, stream.generation))
    }

    fn register(&mut self, channel: Uuid, store_id: Uuid) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.tombstones.remove(&channel);
        self.streams.insert(channel, Stream::new(store_id, generation));
        generation
    }

    /// Unregisters a stream and everything queued for the application about it.
    fn remove_stream(&mut self, channel: Uuid) -> Option<Stream> {
        let stream = self.streams.remove(&channel)?;
        self.inbound_bytes -= stream.queued_bytes();
        self.over_bound.remove(&channel);
        self.sent.remove(&channel);
        if stream.readable_pending {
            self.events.retain(|e| !matches!(e, MuxEvent::Readable { channel: c } if *c == channel));
        }
        Some(stream)
    }

    /// The session tears one stream down: the application is told, the peer gets an `error` frame, and
    /// the channel is tombstoned so the peer's in-flight frames are dropped.
    fn abort_stream(&mut self, channel: Uuid, reason: EndReason) {
        let Some(stream) = self.remove_stream(channel) else { return };
        self.outbound.drop_stream(channel, stream.generation);
        self.tombstones.insert(channel, self.now);
        self.queue_error(stream.store_id, channel, &reason);
        self.events.push_back(MuxEvent::Aborted { channel, reason });
    }

    fn queue_error(&mut self, store_id: Uuid, channel: Uuid, err: &EndReason) {
        if self.shut_down {
            return;
        }
        if self.outbound.queued_errors() >= MAX_QUEUED_CONTROL_FRAMES {
            self.shutdown_inner(EndReason::ControlOverloaded, Teardown::SendClose);
            return;
        }
        let payload = StreamControl::error(err.to_string()).encode(self.codec);
        self.outbound.queue_error(self.codec.encode_frame(&Frame::error(store_id, channel, payload)));
    }

    fn shutdown_inner(&mut self, reason: EndReason, teardown: Teardown) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        self.next_heartbeat = None;
        match teardown {
            Teardown::SendClose => self.outbound.queue_close(),
            Teardown::Silent => self.outbound.clear(),
        }
        let streams = core::mem::take(&mut self.streams);
        self.inbound_bytes = 0;
        self.over_bound.clear();
        self.connection_over_since = None;
        self.sent.clear();
        self.tombstones.clear();
        self.events.retain(|e| !matches!(e, MuxEvent::Readable { .. }));
        for channel in streams.into_keys() {
            self.events.push_back(MuxEvent::Aborted { channel, reason: reason.clone() });
        }
        self.events.push_back(MuxEvent::Shutdown { reason });
    }

    /// Routing of a data frame (PROTOCOL.md §2.5.1).
    fn on_data_frame(&mut self, frame: Frame) {
        let Frame { store_id, channel_id: channel, payload, .. } = frame;
        // A data frame with a null payload carries an empty message; the application's decoder decides.
        let payload = payload.unwrap_or_default();
        // 1. Every data frame is authorized, not just the one that opens a stream.
        if let Role::Server { scopes } = &self.role
            && !scopes.allows(&store_id)
        {
            self.counters.denied_frames += 1;
            self.queue_error(store_id, channel, &EndReason::AccessDenied);
            return;
        }
        let control = StreamControl::parse(self.codec, &payload);
        // 2. A registered stream: queue in order; a stream-control object ends the receiving side.
        if let Some(stream) = self.streams.get(&channel) {
            if stream.peer_closed {
                return;
            }
            match control {
                Some(control) => self.enqueue_end(channel, StreamEnd::from_control(control)),
                None => self.enqueue_payload(channel, payload),
            }
            return;
        }
        // 3. Tombstoned: drop. The peer's own end means it is done with the channel, so the tombstone
        //    has served its purpose and a later frame may open a new stream.
        if self.tombstones.contains(&channel, self.now) {
            if control.is_some() {
                self.tombstones.remove(&channel);
            }
            return;
        }
        // 4. Unknown channel. Clients have nothing to open.
        if !self.role.is_server() {
            return;
        }
        // A late end for a stream we already forgot would open a throw-away stream in Go ([Go quirk]).
        if control.is_some() {
            return;
        }
        if self.config.max_streams > 0 && self.streams.len() >= self.config.max_streams {
            self.counters.refused_streams += 1;
            self.tombstones.insert(channel, self.now);
            self.queue_error(store_id, channel, &EndReason::TooManyStreams);
            return;
        }
        self.register(channel, store_id);
        self.events.push_back(MuxEvent::Opened { channel, store_id });
        self.enqueue_payload(channel, payload);
    }

    /// An `error` control frame (PROTOCOL.md §2.7): ends a registered stream; ignored otherwise.
    fn on_error_frame(&mut self, frame: Frame) {
        let channel = frame.channel_id;
        if self.streams.get(&channel).is_none_or(|s| s.peer_closed) {
            return;
        }
        let payload = frame.payload.unwrap_or_default();
        let end = match StreamControl::parse(self.codec, &payload) {
            Some(control) => StreamEnd::from_control(control),
            // An `error` frame is terminal whatever it carries; Go would hand a malformed one to the
            // reader as data, which no reader expects.
            None => StreamEnd::from_control(StreamControl::error(String::new())),
        };
        self.enqueue_end(channel, end);
    }

    fn enqueue_end(&mut self, channel: Uuid, end: StreamEnd) {
        let Some(stream) = self.streams.get_mut(&channel) else { return };
        if stream.push_end(end) {
            self.signal_readable(channel);
        }
    }

    fn enqueue_payload(&mut self, channel: Uuid, payload: Vec<u8>) {
        let Some(stream) = self.streams.get_mut(&channel) else { return };
        self.inbound_bytes += payload.len();
        if stream.push_payload(payload) {
            self.signal_readable(channel);
        }
        self.enforce_bounds(channel);
    }

    fn signal_readable(&mut self, channel: Uuid) {
        if let Some(stream) = self.streams.get_mut(&channel)
            && !stream.readable_pending
        {
            stream.readable_pending = true;
            self.events.push_back(MuxEvent::Readable { channel });
        }
    }

    /// After `channel` grew: abort it if it is over its own bounds, then abort the largest streams while
    /// the connection is over its bound. Only overflowing streams are touched, so a slow reader never
    /// blocks or fails the others.
    fn enforce_bounds(&mut self, channel: Uuid) {
        let over = self.is_over_bound(channel);
        if self.config.overload.waits() {
            // Nothing is aborted now: the driver stops reading while `is_backlogged` (and
            // `WaitThenClose` closes what stays over its bound too long, see `close_overdue`).
            let now = self.now;
            if over {
                self.over_bound.entry(channel).or_insert(now);
            }
            if self.inbound_bytes > self.config.connection_queue_bytes {
                self.connection_over_since.get_or_insert(now);
            }
            return;
        }
        if over {
            self.counters.overloaded_streams += 1;
            self.abort_stream(channel, EndReason::Overloaded);
        }
        while !self.shut_down && self.inbound_bytes > self.config.connection_queue_bytes {
            let Some(victim) = self.largest_inbound_stream() else { break };
            self.counters.overloaded_streams += 1;
            self.abort_stream(victim, EndReason::Overloaded);
        }
    }

    /// Whether `channel`'s inbound queue holds more than its bounds allow.
    fn is_over_bound(&self, channel: Uuid) -> bool {
        self.streams.get(&channel).is_some_and(|s| {
            s.queued_payloads() > self.config.stream_queue_messages
                || s.queued_bytes() > self.config.stream_queue_bytes
        })
    }
}

/// The shutdown reason for an inbound frame that cannot be accepted, with Go's texts for the limits.
fn decode_failure_reason(error: WireError) -> EndReason {
    match error {
        WireError::FrameTooLarge { .. } => EndReason::FrameTooLarge,
        WireError::PayloadTooLarge { .. } => EndReason::PayloadTooLarge,
        other => EndReason::Malformed(other.to_string()),
    }
}
