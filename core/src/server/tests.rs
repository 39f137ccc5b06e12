//! The connection's memory budget: input pauses the socket and presses producers, output holds back
//! credit and ends the largest sender, nothing is ever held beyond the bounds.

use alloc::vec;
use alloc::vec::Vec;
use uuid::Uuid;

use super::{ConnectionConfig, EngineInput, EngineOutput, ServerConnection};
use crate::api::{Entry, Envelope, Produce, Record};
use crate::auth::StoreScopes;
use crate::mux::{MuxConfig, MuxSession, OverloadPolicy, Role};
use crate::stream::{EndReason, StreamId};
use crate::time::Millis;
use crate::wire::{Codec, Message};

const STORE: Uuid = Uuid::from_u128(7);
const BUDGET: usize = 200_000;
const NOW: Millis = Millis(1_000);

fn pair() -> (MuxSession, ServerConnection) {
    let client = MuxSession::new(Role::Client, Codec::Cbor, MuxConfig::default(), NOW, 1);
    let config = MuxConfig { overload: OverloadPolicy::Wait, ..MuxConfig::default() };
    let server = MuxSession::new(Role::Server { scopes: StoreScopes::All }, Codec::Cbor, config, NOW, 2);
    (client, ServerConnection::with_config(9, server, ConnectionConfig { memory_budget: BUDGET }))
}

/// Delivers every frame the client queued, as long as the server reads; how many were left unread.
fn deliver(client: &mut MuxSession, server: &mut ServerConnection, unread: &mut Vec<Vec<u8>>) {
    while let Some(frame) = client.poll_transmit() {
        unread.push(frame);
    }
    while server.wants_input() && !unread.is_empty() {
        let frame = unread.remove(0);
        server.handle_frame(NOW, &frame);
    }
}

fn engine_inputs(server: &mut ServerConnection) -> Vec<EngineInput> {
    core::iter::from_fn(|| server.poll_engine_input()).map(|(_, input)| input).collect()
}

fn open(client: &mut MuxSession, envelope: Envelope) -> Uuid {
    let payload = Codec::Cbor.encode_message(&Message::Envelope(envelope));
    client.open_stream(NOW, STORE, payload).unwrap()
}

#[test]
fn unreleased_input_pauses_the_socket_and_presses_the_producer() {
    let (mut client, mut server) = pair();
    let channel = open(&mut client, Envelope::Produce(Produce { space: "s".into(), segment: "g".into() }));
    let stream = StreamId { conn: 9, channel };
    for seq in 1..=100 {
        let record = Codec::Cbor.encode_message(&Message::Record(Record::new(seq, vec![1u8; 4_000])));
        client.send(NOW, channel, record).unwrap();
    }
    let mut unread = Vec::new();
    deliver(&mut client, &mut server, &mut unread);
    // The engine takes every message it is given (a producer keeps the records: no bytes released).
    let mut forwarded = 0;
    let mut pressed = false;
    for _ in 0..200 {
        let inputs = engine_inputs(&mut server);
        if inputs.is_empty() {
            break;
        }
        for input in inputs {
            match input {
                EngineInput::Open { .. } => {
                    server.handle_engine(NOW, EngineOutput::InputCredit { stream, messages: 1, bytes: 0 });
                }
                EngineInput::Message { .. } => {
                    forwarded += 1;
                    server.handle_engine(NOW, EngineOutput::InputCredit { stream, messages: 1, bytes: 0 });
                }
                EngineInput::Pressure { stream: pressed_stream } => {
                    assert_eq!(pressed_stream, stream);
                    pressed = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        deliver(&mut client, &mut server, &mut unread);
    }
    assert!(pressed, "the producer holding the input is asked to release it");
    assert!(!server.wants_input(), "the socket is left unread");
    assert!(!unread.is_empty(), "frames wait in the socket");
    assert!(forwarded < 100);
    assert!(server.input_held() < (BUDGET / 2 + 2 * 4_200) as u64, "{}", server.input_held());
    // The producer commits what it has: everything it held comes back, and reading resumes.
    let held = server.input_held() - server.mux().queued_inbound_bytes() as u64;
    server.handle_engine(NOW, EngineOutput::InputCredit { stream, messages: 0, bytes: held });
    assert!(server.wants_input());
}

#[test]
fn a_peer_that_does_not_read_holds_back_credit_then_loses_its_largest_stream() {
    let (mut client, mut server) = pair();
    let mut streams = Vec::new();
    for i in 0..3 {
        let request = Envelope::ConsumeSegment(crate::api::ConsumeSegment {
            space: "s".into(),
            segment: alloc::format!("g{i}"),
            ..Default::default()
        });
        let channel = open(&mut client, request);
        streams.push(StreamId { conn: 9, channel });
    }
    let mut unread = Vec::new();
    deliver(&mut client, &mut server, &mut unread);
    assert_eq!(engine_inputs(&mut server).len(), 3, "three requests forwarded");
    let sized = |stream: &StreamId, bytes: usize| {
        let entry = Entry { payload: Some(vec![5u8; bytes].into()), space: "s".into(), ..Entry::default() };
        let message = Message::Entry(entry);
        EngineOutput::Send { stream: *stream, charge: message.footprint() as u64, message }
    };
    let entry = |stream: &StreamId| sized(stream, 30_000);
    // The socket takes the first frames, then nothing more.
    for _ in 0..2 {
        server.handle_engine(NOW, entry(&streams[0]));
    }
    while server.poll_transmit().is_some() {}
    let frames: u32 = engine_inputs(&mut server)
        .iter()
        .map(|i| if let EngineInput::Credit { frames, .. } = i { *frames } else { 0 })
        .sum();
    assert_eq!(frames, 2, "credit comes back as frames leave");
    // Past half the budget, credit is held back even though frames leave...
    for _ in 0..5 {
        server.handle_engine(NOW, entry(&streams[1]));
    }
    server.poll_transmit();
    assert!(server.output_held() >= (BUDGET / 2) as u64);
    assert!(engine_inputs(&mut server).is_empty(), "credit held back");
    // ...and past the whole budget the stream with the most queued bytes is ended.
    for _ in 0..2 {
        server.handle_engine(NOW, sized(&streams[2], 70_000));
    }
    assert!(server.output_held() <= BUDGET as u64);
    let inputs = engine_inputs(&mut server);
    assert_eq!(inputs, [EngineInput::Aborted { stream: streams[2] }]);
    let mut frames = Vec::new();
    while let Some(frame) = server.poll_transmit() {
        frames.push(frame);
    }
    const BUDGET_TEXT: &[u8] = b"connection memory budget exceeded";
    let refusal = frames.iter().any(|f| {
        let frame = Codec::Cbor.decode_frame(f, &crate::wire::Limits::default()).unwrap();
        frame.channel_id == streams[2].channel && f.windows(BUDGET_TEXT.len()).any(|w| w == BUDGET_TEXT)
    });
    assert!(refusal, "the ended stream is told why");
    // Once the output drained, the held-back credit of the other streams comes back, all of it.
    let credit: u32 = engine_inputs(&mut server)
        .into_iter()
        .map(|i| match i {
            EngineInput::Credit { stream, frames, .. } if stream == streams[1] => frames,
            _ => 0,
        })
        .sum();
    assert_eq!(credit, 5);
}

/// Once the engine refuses new streams (a draining server), a new request is rejected with
/// `server shutting down` while a stream already open goes on to its end.
#[test]
fn a_draining_engine_refuses_new_streams_and_finishes_open_ones() {
    use super::{Engine, EngineConfig, EngineEffect};
    let mut engine = Engine::new(EngineConfig::default(), NOW, 1);
    let request = |channel: u128| EngineInput::Open {
        stream: StreamId { conn: 1, channel: Uuid::from_u128(channel) },
        store: STORE,
        request: Ok(Envelope::Produce(Produce { space: "sp".into(), segment: "sg".into() })),
        charge: 0,
    };
    engine.handle_input(NOW, request(1));
    assert!(matches!(engine.poll_effect(), Some(EngineEffect::OpenStore { store }) if store == STORE));
    engine.handle_store_opened(NOW, STORE, Ok(()));
    let effects: Vec<EngineEffect> = core::iter::from_fn(|| engine.poll_effect()).collect();
    assert!(effects.iter().any(|e| matches!(e, EngineEffect::Storage { .. })), "the produce started");
    engine.refuse_new_streams();
    engine.handle_input(NOW, request(2));
    let refused = EngineOutput::Reject {
        stream: StreamId { conn: 1, channel: Uuid::from_u128(2) },
        error: EndReason::ShuttingDown,
    };
    assert_eq!(engine.poll_effect(), Some(EngineEffect::Output(refused)));
    assert_eq!(engine.stream_count(), 1, "the open produce goes on");
}

/// A connection whose token expires is closed then, whatever its streams are doing: its streams are
/// reported aborted to the engine and the peer gets a `close` frame.
#[test]
fn a_connection_is_closed_when_its_token_expires() {
    use crate::mux::TimeoutReason;
    let (mut client, mut server) = pair();
    server.set_token_expiry(NOW + Millis(5_000));
    let channel = open(&mut client, Envelope::Produce(Produce { space: "s".into(), segment: "g".into() }));
    deliver(&mut client, &mut server, &mut Vec::new());
    assert!(matches!(engine_inputs(&mut server)[..], [EngineInput::Open { .. }]));
    assert_eq!(server.poll_timeout(), Some((NOW + Millis(5_000), TimeoutReason::TokenExpiry)));
    server.handle_timeout(NOW + Millis(4_999));
    assert_eq!(server.shutdown_reason(), None);
    server.handle_timeout(NOW + Millis(5_000));
    assert_eq!(server.shutdown_reason(), Some(&EndReason::TokenExpired));
    let aborted = EngineInput::Aborted { stream: StreamId { conn: 9, channel } };
    assert_eq!(engine_inputs(&mut server), [aborted]);
    let mut frames = Vec::new();
    while let Some(frame) = server.poll_transmit() {
        frames.push(frame);
    }
    for frame in frames {
        client.handle_frame(NOW + Millis(5_000), &frame);
    }
    assert!(client.is_shut_down(), "the peer got the close frame");
    assert_eq!(server.poll_timeout().map(|(_, reason)| reason), None, "nothing more to wait for");
}

/// Stores spread evenly over shards, sequential ids included; with one shard (or none) everything is
/// on shard 0.
#[test]
fn shard_of_spreads_sequential_store_ids_evenly() {
    use super::shard_of;
    let mut counts = [0usize; 4];
    for n in 0..4_000u128 {
        counts[shard_of(&Uuid::from_u128(n), 4)] += 1;
    }
    assert!(counts.iter().all(|c| (850..=1_150).contains(c)), "{counts:?}");
    assert_eq!(shard_of(&Uuid::from_u128(12_345), 1), 0);
    assert_eq!(shard_of(&Uuid::from_u128(12_345), 0), 0);
}

/// Runs an engine's effects: storage at once on `kv`, bus publishes held in `publishes` (unanswered),
/// outputs collected. Returns the streams that ended, with their operation and outcome.
fn run_engine(
    engine: &mut super::Engine,
    kv: &mut crate::storage::MemoryKv,
    outputs: &mut Vec<EngineOutput>,
    publishes: &mut Vec<crate::node::OpId>,
) -> Vec<(StreamId, super::Operation, super::Outcome)> {
    use super::EngineEffect;
    use crate::node::BusCommand;
    use crate::storage::OrderedKv;
    let mut ended = Vec::new();
    while let Some(effect) = engine.poll_effect() {
        match effect {
            EngineEffect::OpenStore { store } => engine.handle_store_opened(NOW, store, Ok(())),
            EngineEffect::Storage { store, op, request } => {
                let result = kv.execute(&request);
                engine.handle_storage(NOW, store, op, result);
            }
            EngineEffect::Bus { command: BusCommand::Publish { op, .. }, .. } => publishes.push(op),
            EngineEffect::Output(output) => outputs.push(output),
            EngineEffect::Ended { stream, op, outcome, .. } => ended.push((stream, op, outcome)),
            _ => {}
        }
    }
    ended
}

/// The inputs of a one-record produce on `stream` (request, record, end).
fn one_record_produce(stream: StreamId, sequence: u64) -> [EngineInput; 3] {
    let request = Ok(Envelope::Produce(Produce { space: "sp".into(), segment: "sg".into() }));
    [
        EngineInput::Open { stream, store: STORE, request, charge: 0 },
        EngineInput::Message { stream, message: Message::Record(Record::new(sequence, "x")), charge: 0 },
        EngineInput::End { stream, end: crate::stream::StreamEnd::Finished },
    ]
}

/// The engine reports every stream's end with its operation and outcome, and counts the open ones,
/// so the adapters keep no per-stream state for their metrics.
#[test]
fn every_stream_end_is_reported_with_its_operation_and_outcome() {
    use super::{Engine, EngineConfig, EngineStats, Operation, Outcome};
    use crate::api::{Peek, SubscribeWorkers};
    use crate::stream::StreamEnd;
    let mut engine = Engine::new(EngineConfig::default(), NOW, 1);
    let (mut kv, mut outputs, mut publishes) = (crate::storage::MemoryKv::default(), vec![], vec![]);
    let id = |n: u128| StreamId { conn: 1, channel: Uuid::from_u128(n) };
    let open = |n: u128, envelope: Envelope| EngineInput::Open {
        stream: id(n),
        store: STORE,
        request: Ok(envelope),
        charge: 0,
    };
    let produce = Envelope::Produce(Produce { space: "sp".into(), segment: "sg".into() });
    let worker = SubscribeWorkers { worker_id: Uuid::from_u128(9), ..SubscribeWorkers::default() };
    engine.handle_input(NOW, open(1, produce));
    engine.handle_input(NOW, open(2, Envelope::SubscribeWorkers(worker)));
    let mut ended = run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    assert_eq!(engine.stats(), EngineStats { streams: 2, subscriptions: 0, workers: 1 });
    let record = Message::Record(Record::new(1, "x"));
    engine.handle_input(NOW, EngineInput::Message { stream: id(1), message: record, charge: 0 });
    engine.handle_input(NOW, EngineInput::End { stream: id(1), end: StreamEnd::Finished });
    engine.handle_input(NOW, EngineInput::Aborted { stream: id(2) });
    engine.handle_input(NOW, open(3, Envelope::Peek(Peek { space: "sp".into(), segment: "sg".into() })));
    ended.extend(run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes));
    engine.refuse_new_streams();
    engine.handle_input(NOW, open(4, Envelope::Peek(Peek::default())));
    ended.extend(run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes));
    ended.sort_by_key(|(stream, ..)| *stream);
    assert_eq!(
        ended,
        [
            (id(1), Operation::Produce, Outcome::Ok),
            (id(2), Operation::SubscribeWorkers, Outcome::Cancelled),
            (id(3), Operation::Peek, Outcome::Ok),
            (id(4), Operation::Peek, Outcome::Rejected),
        ]
    );
    assert_eq!(engine.stats(), EngineStats::default());
}

/// A producer's stream ends right after its last status, while its notification is still being
/// published; a read that follows sees the records at once. A new request that reuses the channel id
/// meanwhile waits until the earlier operation has published (nothing of it leaks into the new
/// stream), then runs.
#[test]
fn a_produce_ends_before_its_publish_and_a_reused_channel_id_waits_for_it() {
    use super::{Engine, EngineConfig};
    use crate::api::Peek;
    use crate::node::BusEvent;
    let mut engine = Engine::new(EngineConfig::default(), NOW, 1);
    let (mut kv, mut outputs, mut publishes) = (crate::storage::MemoryKv::default(), vec![], vec![]);
    let stream = StreamId { conn: 1, channel: Uuid::from_u128(3) };
    for input in one_record_produce(stream, 1) {
        engine.handle_input(NOW, input);
        run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    }
    assert_eq!(publishes.len(), 1, "the notification is being published");
    assert!(
        matches!(&outputs[..], [.., EngineOutput::Send { message: Message::Status(s), .. }, EngineOutput::Close { error: None, .. }] if s.last_sequence == 1),
        "status then close, before the publish completed: {outputs:?}"
    );
    // The record is visible to a read at once.
    let peek = StreamId { conn: 1, channel: Uuid::from_u128(4) };
    let request = Ok(Envelope::Peek(Peek { space: "sp".into(), segment: "sg".into() }));
    engine.handle_input(NOW, EngineInput::Open { stream: peek, store: STORE, request, charge: 0 });
    run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    assert!(outputs.iter().any(|o| matches!(o, EngineOutput::Send { stream: s, message: Message::Entry(e), .. } if *s == peek && e.sequence == 1)));
    // The peer reuses the channel id for its next produce: it waits for the earlier operation.
    outputs.clear();
    for input in one_record_produce(stream, 2) {
        engine.handle_input(NOW, input);
        run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    }
    assert!(outputs.is_empty(), "held while the earlier produce publishes: {outputs:?}");
    assert_eq!(publishes.len(), 1);
    let op = publishes.remove(0);
    engine.handle_bus(NOW, STORE, BusEvent::Published { op, result: Ok(()) });
    run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    assert!(
        matches!(&outputs[..], [.., EngineOutput::Send { message: Message::Status(s), .. }, EngineOutput::Close { error: None, .. }] if s.last_sequence == 2),
        "the new produce ran: {outputs:?}"
    );
    let op = publishes.remove(0);
    engine.handle_bus(NOW, STORE, BusEvent::Published { op, result: Ok(()) });
    run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    let node = engine.node(&STORE).unwrap();
    assert!(node.is_idle(), "no watermark, effect or operation left behind");
}

/// An engine whose one-record produce on `stream` ended and is publishing its notification (unanswered
/// in the returned list), and a second produce on the same channel id, held; no output yet.
fn engine_holding_a_request(
    stream: StreamId,
) -> (super::Engine, crate::storage::MemoryKv, Vec<EngineOutput>, Vec<crate::node::OpId>) {
    let mut engine = super::Engine::new(super::EngineConfig::default(), NOW, 1);
    let (mut kv, mut outputs, mut publishes) = (crate::storage::MemoryKv::default(), vec![], vec![]);
    let [open, ..] = one_record_produce(stream, 2);
    for input in one_record_produce(stream, 1) {
        engine.handle_input(NOW, input);
        run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    }
    outputs.clear();
    engine.handle_input(NOW, open);
    (engine, kv, outputs, publishes)
}

/// A held request whose stream is aborted (its connection closed) never starts, and the earlier
/// operation it waited for finishes as if nothing had happened.
#[test]
fn a_held_request_that_is_aborted_never_starts() {
    use crate::node::BusEvent;
    let stream = StreamId { conn: 1, channel: Uuid::from_u128(3) };
    let (mut engine, mut kv, mut outputs, mut publishes) = engine_holding_a_request(stream);
    engine.handle_input(NOW, EngineInput::Aborted { stream });
    run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    let op = publishes.remove(0);
    engine.handle_bus(NOW, STORE, BusEvent::Published { op, result: Ok(()) });
    run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    assert!(outputs.is_empty() && publishes.is_empty(), "{outputs:?}");
    assert_eq!(engine.stream_count(), 0);
    assert!(engine.node(&STORE).unwrap().is_idle());
}

/// An engine that shuts down while a request is held refuses it like every request waiting for a store,
/// and reports its end.
#[test]
fn a_held_request_is_refused_when_the_engine_shuts_down() {
    use super::{EngineStats, Operation, Outcome};
    let stream = StreamId { conn: 1, channel: Uuid::from_u128(3) };
    let (mut engine, mut kv, mut outputs, mut publishes) = engine_holding_a_request(stream);
    assert!(run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes).is_empty(), "held");
    engine.shutdown(NOW);
    let ended = run_engine(&mut engine, &mut kv, &mut outputs, &mut publishes);
    assert_eq!(ended, [(stream, Operation::Produce, Outcome::Rejected)]);
    assert!(
        matches!(outputs[..], [EngineOutput::Reject { error: EndReason::StoreUnavailable, .. }]),
        "{outputs:?}"
    );
    assert_eq!((engine.stream_count(), engine.stats()), (0, EngineStats::default()));
}
