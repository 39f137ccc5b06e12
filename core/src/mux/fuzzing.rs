//! Fuzz entry points for the mux session, compiled into the library (under `cfg(fuzzing)` and in tests)
//! so they cannot rot: cargo-fuzz targets are one-line calls, and `cargo test` runs them on fixed and
//! random inputs.
//!
//! [`SessionChecker`] is the application model the fuzzer and the property tests share: it consumes a
//! session's events and items and asserts the session's promises (bounds, stream lifecycle, frames that
//! decode).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use uuid::Uuid;

use super::{EndReason, MAX_QUEUED_CONTROL_FRAMES, MuxConfig, MuxEvent, MuxSession, Role, StreamInput};
use crate::auth::StoreScopes;
use crate::time::Millis;
use crate::wire::{Codec, ControlType, Frame, Limits, StreamControl};

/// Tracks what an application knows about a session's streams and asserts the session's contract.
///
/// Lifecycle rules checked: a stream is registered once (`Opened` or a successful `open_stream`) and
/// removed once (`Aborted`, or the application's `release`/`reject`); nothing refers to it after its
/// removal; its receive side ends at most once (`End`) and yields nothing after that; `Shutdown` comes
/// once, last, after the `Aborted` of every stream still registered.
#[derive(Debug, Default)]
pub struct SessionChecker {
    live: BTreeSet<Uuid>,
    ended: BTreeSet<Uuid>,
    shutdown_seen: bool,
    /// Streams registered so far.
    pub registered: u64,
    /// Streams removed so far (aborted, released or rejected).
    pub removed: u64,
    /// `End` items delivered so far.
    pub ends: u64,
    /// `Aborted` events seen so far.
    pub aborts: u64,
}

impl SessionChecker {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Streams the application currently holds.
    pub fn live(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.live.iter().copied()
    }

    /// Whether the application holds `channel`.
    pub fn is_live(&self, channel: Uuid) -> bool {
        self.live.contains(&channel)
    }

    /// Whether `channel`'s receive side has ended.
    pub fn has_ended(&self, channel: Uuid) -> bool {
        self.ended.contains(&channel)
    }

    /// Whether `Shutdown` was seen.
    pub fn is_shut_down(&self) -> bool {
        self.shutdown_seen
    }

    /// The application opened `channel` with `open_stream`.
    pub fn opened_by_app(&mut self, channel: Uuid) {
        assert!(!self.shutdown_seen, "open_stream succeeded after Shutdown");
        self.register(channel);
    }

    /// The application released or rejected `channel`.
    pub fn removed_by_app(&mut self, channel: Uuid) {
        if self.live.remove(&channel) {
            self.ended.remove(&channel);
            self.removed += 1;
        }
    }

    fn register(&mut self, channel: Uuid) {
        assert!(self.live.insert(channel), "stream {channel} registered twice");
        self.registered += 1;
    }

    /// Checks one event against the model.
    pub fn on_event(&mut self, event: &MuxEvent) {
        assert!(!self.shutdown_seen, "event after Shutdown: {event:?}");
        match event {
            MuxEvent::Opened { channel, .. } => self.register(*channel),
            MuxEvent::Readable { channel } | MuxEvent::Sent { channel, .. } => {
                assert!(self.live.contains(channel), "{event:?} for a stream the application does not hold")
            }
            MuxEvent::Aborted { channel, .. } => {
                assert!(self.live.remove(channel), "Aborted for a stream the application does not hold");
                self.ended.remove(channel);
                self.removed += 1;
                self.aborts += 1;
            }
            MuxEvent::Shutdown { .. } => {
                assert!(self.live.is_empty(), "Shutdown while streams are still registered: {:?}", self.live);
                self.shutdown_seen = true;
            }
        }
    }

    /// Checks one item popped with `recv`.
    pub fn on_item(&mut self, channel: Uuid, item: &StreamInput) {
        assert!(self.live.contains(&channel), "item for a stream the application does not hold");
        assert!(!self.ended.contains(&channel), "item after the end of the stream: {item:?}");
        if let StreamInput::End(_) = item {
            self.ended.insert(channel);
            self.ends += 1;
        }
    }

    /// Drains every event, checking each; returns them.
    pub fn drain_events(&mut self, session: &mut MuxSession) -> Vec<MuxEvent> {
        let mut events = Vec::new();
        while let Some(event) = session.poll_event() {
            self.on_event(&event);
            events.push(event);
        }
        events
    }

    /// Pops every queued item of `channel`, checking each; returns them.
    pub fn recv_all(&mut self, session: &mut MuxSession, channel: Uuid) -> Vec<StreamInput> {
        let mut items = Vec::new();
        while let Some(item) = session.recv(channel) {
            self.on_item(channel, &item);
            items.push(item);
        }
        items
    }

    /// Asserts the session's bounds and that it agrees with the model about which streams exist. Call it
    /// with the events drained.
    pub fn check_bounds(&self, session: &MuxSession) {
        let config = session.config();
        let mut total = 0;
        assert_eq!(session.stream_count(), self.live.len(), "session and application disagree on streams");
        for channel in &self.live {
            let info = session.stream_info(*channel);
            let Some(info) = info else { panic!("the application holds {channel}, the session does not") };
            assert!(info.queued_payloads <= config.stream_queue_messages, "stream message bound exceeded");
            assert!(info.queued_bytes <= config.stream_queue_bytes, "stream byte bound exceeded");
            total += info.queued_bytes;
        }
        assert_eq!(total, session.queued_inbound_bytes(), "connection byte counter out of step");
        assert!(session.queued_inbound_bytes() <= config.connection_queue_bytes, "connection bound exceeded");
        assert!(session.tombstone_count() <= config.tombstone_capacity, "tombstone bound exceeded");
        assert!(session.queued_error_frames() <= MAX_QUEUED_CONTROL_FRAMES, "control queue bound exceeded");
        if config.max_streams > 0 && session.role().is_server() {
            assert!(session.stream_count() <= config.max_streams, "stream cap exceeded");
        }
    }
}

/// Reads the fuzzer's bytes as a sequence of small decisions; runs dry as zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    fn u8(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.u8()))
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let len = len.min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }
}

const STORE_ALLOWED: Uuid = Uuid::from_u128(0x6f1c2a9e_3b4d_4e5f_8a7b_1c2d3e4f5a6b);
const STORE_DENIED: Uuid = Uuid::from_u128(0x0b7e3c1a_9d2f_4c6e_a1b3_5d7f9e1c3a5b);

/// Feeds arbitrary bytes to a server session as frames (valid and mutated, in the codec chosen by the
/// first byte), time steps and application calls, asserting after every step that the session keeps
/// its bounds, follows the stream lifecycle and only transmits frames that decode.
pub fn fuzz_server_session(data: &[u8]) {
    run_server_session(data);
}

/// [`fuzz_server_session`], returning the application model so tests can check what was exercised.
pub fn run_server_session(data: &[u8]) -> SessionChecker {
    let mut input = Input { data };
    let header = input.u8();
    let codec = if header & 1 == 0 { Codec::Json } else { Codec::Cbor };
    let scopes =
        if header & 2 == 0 { StoreScopes::All } else { StoreScopes::Stores(alloc::vec![STORE_ALLOWED]) };
    let knobs = input.u8();
    let config = MuxConfig {
        limits: Limits { max_frame: 4096, max_payload: 2048 },
        heartbeat_interval: if header & 4 == 0 { Millis(1000) } else { Millis::ZERO },
        heartbeat_jitter: Millis(200),
        idle_timeout: Millis(3000),
        max_streams: usize::from(knobs & 3),
        stream_queue_messages: 1 + usize::from((knobs >> 2) & 7),
        stream_queue_bytes: 64 + usize::from(input.u8()) * 8,
        connection_queue_bytes: 128 + usize::from(input.u8()) * 16,
        tombstone_capacity: usize::from((knobs >> 5) & 7),
        tombstone_ttl: Millis(500),
        overload: crate::mux::OverloadPolicy::Close,
    };
    let limits = config.limits;
    let mut now = Millis(1_000);
    let mut session = MuxSession::new(Role::Server { scopes }, codec, config, now, input.u64());
    let mut model = SessionChecker::new();
    let mut pool: Vec<Uuid> = (1..=4).map(Uuid::from_u128).collect();
    let mut holding: BTreeSet<Uuid> = BTreeSet::new();

    while let Some(op) = input.byte() {
        let mut timed_out = false;
        // Session-ending inputs (garbage, close frames, oversized payloads, corruption) are kept rare so
        // that most inputs get deep into stream handling; the fuzzer finds them all the same.
        match (op == 0xff, op % 15) {
            (true, _) => {
                let len = usize::from(input.u8());
                let raw = input.bytes(len).to_vec();
                session.handle_frame(now, &raw);
            }
            (_, 0 | 1) => {
                now = now + Millis(u64::from(input.u16() % 2048));
                session.handle_timeout(now);
                timed_out = true;
            }
            (_, 2..=5) => {
                let frame = data_frame(&mut input, codec, &pool);
                let mut bytes = codec.encode_frame(&frame);
                mutate(&mut input, &mut bytes);
                session.handle_frame(now, &bytes);
            }
            (_, 6 | 7) => {
                let control = match input.u8() % 16 {
                    0..=3 => ControlType::Ping,
                    4..=6 => ControlType::Pong,
                    7 => ControlType::Unknown("nudge".into()),
                    8..=14 => ControlType::Error,
                    _ => ControlType::Close,
                };
                let mut frame = Frame::control(control.clone());
                if control == ControlType::Error {
                    frame.channel_id = pick(&mut input, &pool);
                    frame.payload = Some(StreamControl::error("remote says no").encode(codec));
                }
                let mut bytes = codec.encode_frame(&frame);
                mutate(&mut input, &mut bytes);
                session.handle_frame(now, &bytes);
            }
            (_, 8 | 9) => {
                let channel = pick(&mut input, &pool);
                if input.u8() & 1 == 0 {
                    holding.insert(channel);
                } else {
                    holding.remove(&channel);
                    model.recv_all(&mut session, channel);
                }
            }
            (_, 10..=12) => {
                let channel = pick(&mut input, &pool);
                let live = model.is_live(channel);
                match input.u8() % 5 {
                    0 | 1 => {
                        let len = usize::from(input.u8()) * 16;
                        let sendable = live && !session.is_shut_down() && !sent_closed(&session, channel);
                        let result = session.send(now, channel, alloc::vec![0x5a; len]);
                        assert_eq!(result.is_ok(), sendable && len <= limits.max_payload);
                    }
                    2 => {
                        let err = (input.u8() & 1 == 0).then_some("handler failed");
                        let sendable = live && !session.is_shut_down() && !sent_closed(&session, channel);
                        assert_eq!(session.close_send(now, channel, err).is_ok(), sendable);
                    }
                    3 => {
                        session.release(channel);
                        model.removed_by_app(channel);
                    }
                    _ => {
                        session.reject(now, channel, &EndReason::StoreUnavailable);
                        model.removed_by_app(channel);
                    }
                }
            }
            (_, _) => {
                // The adapter writes some frames: everything we transmit must decode for the peer.
                for _ in 0..input.u8() % 16 {
                    let Some(bytes) = session.poll_transmit() else { break };
                    assert!(codec.decode_frame(&bytes, &limits).is_ok(), "transmitted an undecodable frame");
                }
                if input.u8() == 0xff {
                    session.handle_transport_closed(now, EndReason::Transport("connection reset".into()));
                }
            }
        }
        for event in model.drain_events(&mut session) {
            match event {
                MuxEvent::Opened { channel, .. } if !pool.contains(&channel) && pool.len() < 64 => {
                    pool.push(channel)
                }
                MuxEvent::Readable { channel } if !holding.contains(&channel) => {
                    model.recv_all(&mut session, channel);
                }
                _ => {}
            }
        }
        model.check_bounds(&session);
        if timed_out && let Some((at, _)) = session.poll_timeout() {
            assert!(at > now, "timer would spin: deadline {at:?} at {now:?}");
        }
    }

    session.shutdown(now, EndReason::MuxerClosed);
    model.drain_events(&mut session);
    assert!(model.is_shut_down(), "no Shutdown after shutdown()");
    assert_eq!(model.registered, model.removed, "a stream was never removed");
    while let Some(bytes) = session.poll_transmit() {
        assert!(codec.decode_frame(&bytes, &limits).is_ok(), "transmitted an undecodable frame");
    }
    assert!(session.poll_timeout().is_none());
    model
}

fn sent_closed(session: &MuxSession, channel: Uuid) -> bool {
    session.stream_info(channel).is_some_and(|info| info.send_closed)
}

fn pick(input: &mut Input<'_>, pool: &[Uuid]) -> Uuid {
    pool.get(usize::from(input.u8()) % pool.len().max(1)).copied().unwrap_or_default()
}

fn data_frame(input: &mut Input<'_>, codec: Codec, pool: &[Uuid]) -> Frame {
    let selector = input.u8();
    let store = if selector & 0xc0 != 0xc0 { STORE_ALLOWED } else { STORE_DENIED };
    let channel = pick(input, pool);
    let payload = match selector % 16 {
        0 => StreamControl::close().encode(codec),
        1 => StreamControl::close_with("boom").encode(codec),
        2 => StreamControl::error("oops").encode(codec),
        3 => StreamControl::Unknown { kind: "mux::weird".into(), err: "x".into() }.encode(codec),
        // Over the payload limit: the whole session must shut down.
        4 if selector & 0x70 == 0x70 => alloc::vec![1; 2049],
        _ => {
            let len = usize::from(input.u8());
            input.bytes(len).to_vec()
        }
    };
    Frame::data(store, channel, payload)
}

fn mutate(input: &mut Input<'_>, bytes: &mut Vec<u8>) {
    match input.u8() % 32 {
        0 if !bytes.is_empty() => {
            let at = usize::from(input.u16()) % bytes.len();
            bytes[at] ^= input.u8() | 1;
        }
        1 => {
            let at = usize::from(input.u16()) % (bytes.len() + 1);
            bytes.truncate(at);
        }
        _ => {}
    }
}
