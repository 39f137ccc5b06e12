//! Core hot paths not covered by `wire`: the stored entry encoding (encode and decode, and the two keys
//! every entry is written under), a produced record decoded from each codec (what the server does per
//! record it receives), and the node's produce path end to end on the in-memory store (validation of
//! each record's sequence, chunking, the commit batch with two puts per record, the status).
//!
//! `cargo bench -p streamkit-proto --features sim --bench hot` (the produce group drives the node through
//! the `sim` harness).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use streamkit_proto::api::{Metadata, Produce, Record, Request, Trx};
use streamkit_proto::node::NodeConfig;
use streamkit_proto::node::harness::NodeHarness;
use streamkit_proto::storage::encoding::{decode_entry, encode_entry};
use streamkit_proto::storage::keys;
use streamkit_proto::stream::StreamEnd;
use streamkit_proto::wire::{Codec, Message, MessageKind};
use uuid::Uuid;

fn payload() -> Vec<u8> {
    (0..100u8).map(|i| i.wrapping_mul(37)).collect()
}

fn metadata() -> Metadata {
    [("content-type", "application/octet-stream"), ("tenant", "acme")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn trx() -> Trx {
    Trx { id: Uuid::from_u128(0x3f2a1b4c_5d6e_4f70_8a9b_0c1d2e3f4a5b), node: Uuid::nil(), number: 17 }
}

/// The stored value of an entry and the keys it is stored under.
fn entry_storage(c: &mut Criterion) {
    let payload = payload();
    let metadata = metadata();
    let trx = trx();
    let mut group = c.benchmark_group("entry");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            encode_entry(&mut out, black_box(4242), black_box(1_717_171_717_171), &trx, &payload, &metadata);
            out
        })
    });
    group.bench_function("encode_no_metadata", |b| {
        let empty = Metadata::new();
        b.iter(|| {
            let mut out = Vec::new();
            encode_entry(&mut out, black_box(4242), black_box(1_717_171_717_171), &trx, &payload, &empty);
            out
        })
    });
    let mut stored = Vec::new();
    encode_entry(&mut stored, 4242, 1_717_171_717_171, &trx, &payload, &metadata);
    let stored = bytes::Bytes::from(stored);
    group.bench_function("decode", |b| {
        b.iter(|| decode_entry(black_box(stored.clone()), "orders", "customer-42").expect("entry"))
    });
    group.bench_function("keys", |b| {
        b.iter(|| {
            let space = keys::space_entry(black_box("orders"), 1_717_171_717_171, "customer-42", 4242);
            let segment = keys::segment_entry(black_box("orders"), "customer-42", 4242);
            (space, segment)
        })
    });
    group.finish();
}

/// A produced record as the server receives it: the inner message decoded from each codec.
fn record_decode(c: &mut Criterion) {
    let record = Message::Record(Record {
        sequence: 4242,
        payload: Some(payload().into()),
        metadata: Metadata::new(),
    });
    let mut group = c.benchmark_group("record_decode");
    group.throughput(Throughput::Elements(1));
    for (name, codec) in [("json", Codec::Json), ("cbor", Codec::Cbor)] {
        let bytes = codec.encode_message(&record);
        group.bench_function(name, |b| {
            b.iter(|| codec.decode_message(MessageKind::Record, black_box(&bytes)).expect("record"))
        });
    }
    group.finish();
}

/// The node's produce path: one produce stream of `n` records to a new segment, validated, committed to
/// the in-memory store in chunks and acknowledged (per record: sequence check, stored value and two
/// keys, plus the per-chunk status and head).
fn produce_path(c: &mut Criterion) {
    let payload = payload();
    let mut group = c.benchmark_group("produce");
    for n in [1u64, 100] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("records_{n}"), |b| {
            b.iter_batched(
                || NodeHarness::new(NodeConfig::default()),
                |mut harness| {
                    let stream = harness.open(Request::Produce(Produce {
                        space: "orders".into(),
                        segment: "customer-42".into(),
                    }));
                    for seq in 1..=n {
                        harness.send(stream, Message::Record(Record::new(seq, payload.clone())));
                    }
                    harness.end(stream, StreamEnd::Finished);
                    assert_eq!(harness.log(stream).close_error(), None);
                    harness
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = entry_storage, record_decode, produce_path
}
criterion_main!(benches);
