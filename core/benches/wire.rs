//! Wire hot paths: a data frame carrying an `Entry` (100-byte payload, 2 metadata keys), encoded and
//! decoded with each codec, frame and inner message together, as a server sends and a client receives it
//! (`Codec::encode_message` / `decode_message`, the paths the mux uses).
//!
//! `cargo bench -p streamkit-proto --bench wire`. Throughput is the size of the encoded frame of each
//! codec. The `parts` group splits the CBOR and JSON work into frame and inner message, to show which
//! layer dominates.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use streamkit_proto::api::{Entry, Trx};
use streamkit_proto::wire::{Codec, Frame, Limits, Message, MessageKind};
use uuid::Uuid;

const STORE: Uuid = Uuid::from_u128(0x6f1c2a9e_3b4d_4e5f_8a7b_1c2d3e4f5a6b);
const CHANNEL: Uuid = Uuid::from_u128(0x0b7e3c1a_9d2f_4c6e_a1b3_5d7f9e1c3a5b);

fn entry() -> Entry {
    let payload: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
    Entry {
        sequence: 4242,
        timestamp: 1_717_171_717_171,
        trx: Trx {
            id: Uuid::from_u128(0x3f2a1b4c_5d6e_4f70_8a9b_0c1d2e3f4a5b),
            node: Uuid::nil(),
            number: 17,
        },
        payload: Some(payload.into()),
        metadata: [("content-type", "application/octet-stream"), ("tenant", "acme")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        space: "orders".into(),
        segment: "customer-42".into(),
    }
}

/// Server side: encode the entry, wrap it in a data frame, encode the frame.
fn encode(codec: Codec, entry: &Message) -> Vec<u8> {
    let inner = codec.encode_message(entry);
    codec.encode_frame(&Frame::data(STORE, CHANNEL, inner))
}

/// Client side: decode the frame, then the entry in its payload.
fn decode(codec: Codec, bytes: &[u8], limits: &Limits) -> Entry {
    let frame = codec.decode_frame(bytes, limits).expect("frame");
    match codec.decode_message(MessageKind::Entry, frame.payload.as_deref().unwrap_or_default()) {
        Ok(Message::Entry(entry)) => entry,
        other => panic!("not an entry: {other:?}"),
    }
}

fn frame_and_entry(c: &mut Criterion) {
    let entry = Message::Entry(entry());
    let limits = Limits::default();
    for (name, codec) in [("json", Codec::Json), ("cbor", Codec::Cbor)] {
        let bytes = encode(codec, &entry);
        assert_eq!(Message::Entry(decode(codec, &bytes, &limits)), entry);
        let mut group = c.benchmark_group(format!("frame+entry/{name}"));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("encode", |b| b.iter(|| encode(codec, black_box(&entry))));
        group.bench_function("decode", |b| b.iter(|| decode(codec, black_box(&bytes), &limits)));
        group.finish();
    }
}

fn parts(c: &mut Criterion) {
    let entry = Message::Entry(entry());
    let limits = Limits::default();
    let mut group = c.benchmark_group("parts");
    for (name, codec) in [("json", Codec::Json), ("cbor", Codec::Cbor)] {
        let inner = codec.encode_message(&entry);
        let frame = Frame::data(STORE, CHANNEL, inner.clone());
        let bytes = codec.encode_frame(&frame);
        group.bench_function(format!("{name}/entry_encode"), |b| {
            b.iter(|| codec.encode_message(black_box(&entry)))
        });
        group.bench_function(format!("{name}/entry_decode"), |b| {
            b.iter(|| codec.decode_message(MessageKind::Entry, black_box(&inner)).expect("entry"))
        });
        group.bench_function(format!("{name}/frame_encode"), |b| {
            b.iter(|| codec.encode_frame(black_box(&frame)))
        });
        group.bench_function(format!("{name}/frame_decode"), |b| {
            b.iter(|| codec.decode_frame(black_box(&bytes), &limits).expect("frame"))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    // Short runs: the machine has 2 cores shared with builds; medians of 50 samples are stable enough.
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = frame_and_entry, parts }
criterion_main!(benches);
