//! Fuzz entry points of the wire decoders (compiled under `cfg(fuzzing)`, `cfg(test)` or the `fuzzing`
//! feature).
//!
//! Each entry point takes arbitrary bytes, runs a decoder over them and, when the bytes decode, asserts
//! that the value is stable: encoding it and decoding the result gives an equal value, and encoding is
//! byte-stable. A failed assertion is a panic, which is what the fuzzer reports. The targets in `fuzz/`
//! are one-line calls of these functions; `cargo test` runs them over the golden vectors and random
//! inputs, so they are compiled and exercised without a fuzzer.
//!
//! [`seed_corpus`] derives a starting corpus for every target from the captured Go frames; the unit test
//! of this module writes it to disk when `STREAMKIT_FUZZ_CORPUS_DIR` is set:
//!
//! ```text
//! STREAMKIT_FUZZ_CORPUS_DIR=$PWD/fuzz/corpus cargo test -p streamkit-proto --lib seed_corpus
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Codec, Limits, MessageKind, StreamControl, cbor, cbor_fast};
use crate::api::{Entry, Envelope, Record};

/// Names of the wire-level fuzz targets in `fuzz/Cargo.toml` (the `mux_session` target has its own entry
/// point in `mux::fuzzing`).
pub const TARGETS: [&str; 4] = ["json_frame", "cbor_frame", "envelope", "stream_control"];

/// Limits for re-decoding what the encoder wrote: a re-encoding may be longer than its input (Go
/// escaping turns `<` into `\u003c`), so the input's limits do not apply to it.
const UNLIMITED: Limits = Limits { max_frame: usize::MAX, max_payload: usize::MAX };

/// Decodes a JSON frame; if it decodes, checks frame stability, the same frame in CBOR, and every inner
/// decoder on its payload.
pub fn json_frame(data: &[u8]) {
    frame(Codec::Json, data);
}

/// Decodes a CBOR frame; if it decodes, checks frame stability, the same frame in JSON, and every inner
/// decoder on its payload. Wherever the hand-written decoder ([`cbor_fast`]) answers, its value must be
/// ciborium's.
pub fn cbor_frame(data: &[u8]) {
    frame(Codec::Cbor, data);
}

/// Decodes an envelope with both codecs; whatever decodes must re-encode to bytes that decode to the same
/// envelope, and requests must survive the trip through [`crate::api::Request`].
pub fn envelope(data: &[u8]) {
    for codec in [Codec::Json, Codec::Cbor] {
        let decoded = match codec {
            Codec::Json => Envelope::from_json(data),
            Codec::Cbor => Envelope::from_cbor(data),
        };
        let Ok(first) = decoded else { continue };
        let encoded = codec.encode_value(&first);
        assert_eq!(codec.encode_value(&first), encoded, "{codec:?} envelope encoding is deterministic");
        if codec == Codec::Json {
            assert_valid_json(&encoded);
        }
        let second = match codec {
            Codec::Json => Envelope::from_json(&encoded),
            Codec::Cbor => Envelope::from_cbor(&encoded),
        }
        .unwrap_or_else(|e| panic!("{codec:?}: re-encoded envelope does not decode: {e}"));
        assert_eq!(second, first, "{codec:?}: envelope changed in a round trip");
        assert_eq!(codec.encode_value(&second), encoded, "{codec:?}: envelope re-encoding differs");
        if let Ok(request) = first.clone().into_request() {
            assert_eq!(request.into_envelope(), first, "request/envelope conversion is lossless");
        }
    }
}

/// Parses stream control with both codecs; a parsed object must encode to bytes that parse to the same
/// object.
pub fn stream_control(data: &[u8]) {
    for codec in [Codec::Json, Codec::Cbor] {
        check_stream_control(codec, data);
    }
}

fn other(codec: Codec) -> Codec {
    match codec {
        Codec::Json => Codec::Cbor,
        Codec::Cbor => Codec::Json,
    }
}

fn frame(codec: Codec, data: &[u8]) {
    if codec == Codec::Cbor {
        // Differential check: the hand-written decoder agrees with ciborium wherever it answers.
        if let Some(view) = cbor_fast::parse_frame(data) {
            assert_eq!(
                cbor::read_frame(data).ok(),
                Some(view.into_frame()),
                "cbor_fast frame differs from ciborium"
            );
        }
    }
    let Ok(first) = codec.decode_frame(data, &Limits::default()) else { return };
    let encoded = codec.encode_frame(&first);
    assert_eq!(codec.encode_frame(&first), encoded, "{codec:?} frame encoding is deterministic");
    if codec == Codec::Json {
        assert_valid_json(&encoded);
    }
    let second = codec
        .decode_frame(&encoded, &UNLIMITED)
        .unwrap_or_else(|e| panic!("{codec:?}: re-encoded frame does not decode: {e}"));
    assert_eq!(second, first, "{codec:?}: frame changed in a round trip");
    assert_eq!(codec.encode_frame(&second), encoded, "{codec:?}: frame re-encoding differs");

    let other = other(codec);
    let translated = other.decode_frame(&other.encode_frame(&first), &UNLIMITED);
    assert_eq!(translated.as_ref(), Ok(&first), "{codec:?} frame in {other:?}");

    if let Some(payload) = &first.payload {
        inner(codec, payload);
    }
}

/// Every inner decoder of `codec` over `data`.
fn inner(codec: Codec, data: &[u8]) {
    if codec == Codec::Cbor {
        if let Some(record) = cbor_fast::parse_record(&bytes::Bytes::copy_from_slice(data)) {
            assert_eq!(
                cbor::from_slice::<Record>(data).ok(),
                Some(record),
                "cbor_fast record differs from ciborium"
            );
        }
        if let Some(entry) = cbor_fast::parse_entry(&bytes::Bytes::copy_from_slice(data)) {
            assert_eq!(
                cbor::from_slice::<Entry>(data).ok(),
                Some(entry),
                "cbor_fast entry differs from ciborium"
            );
        }
    }
    for kind in MessageKind::ALL {
        let Ok(first) = codec.decode_message(kind, data) else { continue };
        assert_eq!(first.kind(), kind);
        let encoded = codec.encode_message(&first);
        if codec == Codec::Json {
            assert_valid_json(&encoded);
        }
        let second = codec
            .decode_message(kind, &encoded)
            .unwrap_or_else(|e| panic!("{codec:?} {kind:?}: re-encoded message does not decode: {e}"));
        assert_eq!(second, first, "{codec:?} {kind:?}: message changed in a round trip");
        assert_eq!(codec.encode_message(&second), encoded, "{codec:?} {kind:?}: re-encoding differs");
    }
    check_stream_control(codec, data);
}

fn check_stream_control(codec: Codec, data: &[u8]) {
    let Some(first) = StreamControl::parse(codec, data) else { return };
    let encoded = first.encode(codec);
    assert_eq!(first.encode(codec), encoded, "{codec:?} stream control encoding is deterministic");
    if codec == Codec::Json {
        assert_valid_json(&encoded);
    }
    assert_eq!(StreamControl::parse(codec, &encoded), Some(first), "{codec:?}: stream control round trip");
}

fn assert_valid_json(bytes: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        panic!("the JSON encoder wrote invalid JSON ({e}): {:?}", String::from_utf8_lossy(bytes));
    }
}

/// One input of a fuzz target's seed corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// The target (one of [`TARGETS`]).
    pub target: &'static str,
    /// A file name for the input, unique within the target.
    pub name: String,
    /// The input bytes.
    pub data: Vec<u8>,
}

/// Seed inputs for every target, derived from the captured Go frames (`tests/vectors`): the frames in
/// JSON and CBOR, their envelopes and stream-control payloads in both codecs.
pub fn seed_corpus() -> Vec<Seed> {
    #[derive(serde::Deserialize)]
    struct Vector {
        text: String,
        kind: String,
        inner: Option<String>,
    }
    let limits = Limits::default();
    let mut seeds = Vec::new();
    let mut seed =
        |target: &'static str, name: String, data: Vec<u8>| seeds.push(Seed { target, name, data });
    let lines = include_str!("../../tests/vectors/go-wire-frames.jsonl").lines();
    for (i, line) in lines.enumerate() {
        // The vectors file is part of the crate; a line that does not parse only loses a seed.
        let Ok(v) = serde_json::from_str::<Vector>(line) else { continue };
        seed("json_frame", format!("vector-{i:03}"), v.text.clone().into_bytes());
        if let Ok(frame) = Codec::Json.decode_frame(v.text.as_bytes(), &limits) {
            seed("cbor_frame", format!("vector-{i:03}"), Codec::Cbor.encode_frame(&frame));
        }
        let Some(inner) = v.inner else { continue };
        if v.kind.contains("envelope") {
            if let Ok(env) = Envelope::from_json(inner.as_bytes()) {
                seed("envelope", format!("vector-{i:03}-cbor"), Codec::Cbor.encode_value(&env));
            }
            seed("envelope", format!("vector-{i:03}-json"), inner.into_bytes());
        } else if v.kind.contains("stream-control") || v.kind.ends_with("error frame") {
            if let Some(control) = StreamControl::parse(Codec::Json, inner.as_bytes()) {
                seed("stream_control", format!("vector-{i:03}-cbor"), control.encode(Codec::Cbor));
            }
            seed("stream_control", format!("vector-{i:03}-json"), inner.into_bytes());
        }
    }
    seeds
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::api::Peek;
    use crate::wire::{ControlType, Frame};
    use proptest::prelude::*;
    use uuid::Uuid;

    fn run(target: &str, data: &[u8]) {
        match target {
            "json_frame" => json_frame(data),
            "cbor_frame" => cbor_frame(data),
            "envelope" => envelope(data),
            "stream_control" => stream_control(data),
            other => panic!("unknown target {other}"),
        }
    }

    /// Also writes the corpus to `$STREAMKIT_FUZZ_CORPUS_DIR/<target>/<name>` when that variable is set
    /// (what `.ci/run` does before its fuzz smoke run; see the README).
    #[test]
    fn the_seed_corpus_covers_every_target_and_passes_it() {
        let seeds = seed_corpus();
        if let Some(dir) = std::env::var_os("STREAMKIT_FUZZ_CORPUS_DIR") {
            let dir = std::path::PathBuf::from(dir);
            for seed in &seeds {
                let target = dir.join(seed.target);
                std::fs::create_dir_all(&target).expect("create the corpus directory");
                std::fs::write(target.join(&seed.name), &seed.data).expect("write a seed");
            }
            std::println!("wrote {} seeds under {}", seeds.len(), dir.display());
        }
        for target in TARGETS {
            let count = seeds.iter().filter(|s| s.target == target).count();
            assert!(count >= 50, "{target}: only {count} seeds");
        }
        let mut names: Vec<_> = seeds.iter().map(|s| (s.target, s.name.as_str())).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), seeds.len(), "seed names are unique per target");
        for seed in &seeds {
            run(seed.target, &seed.data);
        }
    }

    #[test]
    fn entry_points_accept_malformed_input() {
        let frame =
            Frame::data(Uuid::from_u128(7), Uuid::from_u128(9), b"{\"type\":\"mux::close\"}".to_vec());
        let json = Codec::Json.encode_frame(&frame);
        let cbor = Codec::Cbor.encode_frame(&frame);
        let inputs: [&[u8]; 10] = [
            b"",
            b"{",
            b"null",
            b"[]",
            b"\xff\xff\xff",
            &json[..json.len() / 2],
            &cbor[..cbor.len() / 2],
            br#"{"ControlType":"data","payload":"!!!!"}"#,
            br#"{"$type":"streamkit://api/v1/peek","content":null}"#,
            br#"{"type":"mux::close","err":""}"#,
        ];
        for input in inputs {
            for target in TARGETS {
                run(target, input);
            }
        }
    }

    #[test]
    fn entry_points_take_valid_values() {
        let entry =
            Entry { sequence: 3, payload: Some(b"<&>".to_vec().into()), ..Entry::empty("s\u{2028}", "") };
        let record = Record::new(1, "x").with_metadata("", "empty key");
        let peek = Envelope::Peek(Peek { space: "é".into(), segment: "\0".into() });
        for codec in [Codec::Json, Codec::Cbor] {
            for payload in
                [codec.encode_value(&entry), codec.encode_value(&record), codec.encode_value(&peek)]
            {
                let mut frame = Frame::data(Uuid::nil(), Uuid::from_u128(1), payload.clone());
                frame.trace_context.insert("traceparent".into(), "00-x-y-01".into());
                json_frame(&Codec::Json.encode_frame(&frame));
                cbor_frame(&Codec::Cbor.encode_frame(&frame));
                envelope(&payload);
            }
            stream_control(&StreamControl::close_with("boom").encode(codec));
            stream_control(
                &StreamControl::Unknown { kind: "mux::x".into(), err: String::new() }.encode(codec),
            );
            let ping = Frame::control(ControlType::Unknown("later".into()));
            cbor_frame(&Codec::Cbor.encode_frame(&ping));
            json_frame(&Codec::Json.encode_frame(&ping));
        }
    }

    proptest! {
        #[test]
        fn entry_points_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            for target in TARGETS {
                run(target, &data);
            }
        }
    }
}
