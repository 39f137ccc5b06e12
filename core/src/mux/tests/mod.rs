//! Tests of the mux session: unit rules (frames, streams, bounds, heartbeat, shutdown), scenarios over
//! the simulation harness, property tests and the fuzz entry point.

mod bounds;
mod frames;
mod fuzz;
mod heartbeat;
mod props;
mod scenarios;
mod shutdown;
mod streams;

use alloc::string::ToString as _;
use alloc::vec::Vec;
use uuid::Uuid;

use super::{EndReason, MuxConfig, MuxCounters, MuxEvent, MuxSession, Role, StreamEnd, StreamInput};
use crate::auth::StoreScopes;
use crate::time::Millis;
use crate::wire::{Codec, ControlType, Frame, Limits, StreamControl};

/// Store and channel of the example frames of PROTOCOL.md §2.11.
const STORE: Uuid = Uuid::from_u128(0x6f1c2a9e_3b4d_4e5f_8a7b_1c2d3e4f5a6b);
const CHANNEL: Uuid = Uuid::from_u128(0x0b7e3c1a_9d2f_4c6e_a1b3_5d7f9e1c3a5b);
const OTHER_STORE: Uuid = Uuid::from_u128(0xa1a1a1a1_0000_4000_8000_000000000001);
const CODECS: [Codec; 2] = [Codec::Json, Codec::Cbor];
const T0: Millis = Millis(1_000_000);

fn ch(n: u128) -> Uuid {
    Uuid::from_u128(0xc0000000_0000_4000_8000_000000000000 + n)
}

/// Defaults without heartbeats, so unit tests control every frame.
fn quiet() -> MuxConfig {
    MuxConfig { heartbeat_interval: Millis::ZERO, ..MuxConfig::default() }
}

fn server(codec: Codec) -> MuxSession {
    server_with(codec, quiet(), StoreScopes::All)
}

fn server_with(codec: Codec, config: MuxConfig, scopes: StoreScopes) -> MuxSession {
    MuxSession::new(Role::Server { scopes }, codec, config, T0, 11)
}

fn client(codec: Codec) -> MuxSession {
    MuxSession::new(Role::Client, codec, quiet(), T0, 12)
}

fn only(store: Uuid) -> StoreScopes {
    StoreScopes::Stores(alloc::vec![store])
}

fn data(codec: Codec, store: Uuid, channel: Uuid, payload: &[u8]) -> Vec<u8> {
    codec.encode_frame(&Frame::data(store, channel, payload.to_vec()))
}

/// A data frame carrying a stream-control object.
fn ctl(codec: Codec, channel: Uuid, control: StreamControl) -> Vec<u8> {
    codec.encode_frame(&Frame::data(STORE, channel, control.encode(codec)))
}

fn error_frame(codec: Codec, channel: Uuid, err: &str) -> Vec<u8> {
    codec.encode_frame(&Frame::error(STORE, channel, StreamControl::error(err).encode(codec)))
}

fn control(codec: Codec, control: ControlType) -> Vec<u8> {
    codec.encode_frame(&Frame::control(control))
}

fn events(session: &mut MuxSession) -> Vec<MuxEvent> {
    core::iter::from_fn(|| session.poll_event()).collect()
}

/// Every frame waiting for transmission, decoded (each must decode under the session's limits).
fn transmits(session: &mut MuxSession) -> Vec<Frame> {
    let codec = session.codec();
    let limits: Limits = session.config().limits;
    core::iter::from_fn(|| session.poll_transmit())
        .map(|bytes| codec.decode_frame(&bytes, &limits).expect("transmitted frames decode"))
        .collect()
}

fn items(session: &mut MuxSession, channel: Uuid) -> Vec<StreamInput> {
    core::iter::from_fn(|| session.recv(channel)).collect()
}

fn payload(bytes: &[u8]) -> StreamInput {
    StreamInput::Payload(bytes.to_vec())
}

fn failed(reason: EndReason) -> StreamInput {
    StreamInput::End(StreamEnd::Failed(reason))
}

fn finished() -> StreamInput {
    StreamInput::End(StreamEnd::Finished)
}

/// The stream-control object a frame carries.
fn control_of(codec: Codec, frame: &Frame) -> Option<StreamControl> {
    StreamControl::parse(codec, frame.payload.as_deref()?)
}

/// Opens `channel` on a server with one payload and drains the resulting events.
fn open(server: &mut MuxSession, channel: Uuid, first: &[u8]) {
    let codec = server.codec();
    server.handle_frame(T0, &data(codec, STORE, channel, first));
    let evs = events(server);
    assert!(evs.contains(&MuxEvent::Opened { channel, store_id: STORE }), "{evs:?}");
}
