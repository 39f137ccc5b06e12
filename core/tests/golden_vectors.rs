//! Golden interop tests: real frames captured between the Go client and server (vectors/README.md) and
//! the example frames of PROTOCOL.md §2.11 and §6.6 must decode, and re-encode to the very same bytes.

use base64::Engine as _;
use serde::Deserialize;
use streamkit_proto::wire::{Codec, ControlType, Frame, Limits, Message, MessageKind, StreamControl};

#[derive(Deserialize)]
struct Vector {
    dir: String,
    kind: String,
    text: String,
    inner: Option<String>,
}

enum Inner {
    Message(MessageKind),
    Control,
    None,
}

fn inner_kind(kind: &str) -> Inner {
    let tail = kind.trim_start_matches("c2s ").trim_start_matches("s2c ");
    if tail.starts_with("envelope") {
        Inner::Message(MessageKind::Envelope)
    } else if tail == "Record" {
        Inner::Message(MessageKind::Record)
    } else if tail == "Entry" {
        Inner::Message(MessageKind::Entry)
    } else if tail.starts_with("SegmentStatus") {
        Inner::Message(MessageKind::Status)
    } else if tail == "LeaseResult" {
        Inner::Message(MessageKind::LeaseResult)
    } else if tail == "name" {
        Inner::Message(MessageKind::Name)
    } else if tail.starts_with("stream-control") || tail == "error frame" {
        Inner::Control
    } else if tail == "ping" || tail == "pong" || tail == "muxer close" {
        Inner::None
    } else {
        panic!("unknown vector kind {kind}")
    }
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors/go-wire-frames.jsonl");
    text.lines().map(|l| serde_json::from_str(l).expect("vector line")).collect()
}

#[test]
fn every_go_vector_decodes_and_reencodes_byte_identically() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 325);
    let limits = Limits::default();
    for (i, v) in vectors.iter().enumerate() {
        let frame =
            Codec::Json.decode_frame(v.text.as_bytes(), &limits).unwrap_or_else(|e| panic!("line {i}: {e}"));
        assert!(v.dir == "c2s" || v.dir == "s2c");
        // The frame re-encodes to the captured text.
        assert_eq!(
            String::from_utf8(Codec::Json.encode_frame(&frame)).unwrap(),
            v.text,
            "line {i} ({}) frame re-encoding",
            v.kind
        );
        let payload = frame.payload.as_deref();
        assert_eq!(payload.map(|p| std::str::from_utf8(p).unwrap()), v.inner.as_deref(), "line {i} payload");
        match inner_kind(&v.kind) {
            Inner::None => assert!(payload.is_none(), "line {i}"),
            Inner::Control => {
                let control =
                    StreamControl::parse(Codec::Json, payload.unwrap()).unwrap_or_else(|| panic!("line {i}"));
                assert_eq!(control.encode(Codec::Json), payload.unwrap(), "line {i} control re-encoding");
                if v.kind.ends_with("error frame") {
                    assert_eq!(frame.control, ControlType::Error);
                    assert!(matches!(control, StreamControl::Error { .. }));
                }
            }
            Inner::Message(kind) => {
                let bytes = payload.unwrap();
                assert_eq!(StreamControl::parse(Codec::Json, bytes), None, "line {i} is data");
                let message = Codec::Json
                    .decode_message(kind, bytes)
                    .unwrap_or_else(|e| panic!("line {i} ({}): {e}", v.kind));
                assert_eq!(
                    String::from_utf8(Codec::Json.encode_message(&message)).unwrap(),
                    v.inner.clone().unwrap(),
                    "line {i} ({}) inner re-encoding",
                    v.kind
                );
                // The same message survives a CBOR round trip unchanged.
                let cbor = Codec::Cbor.encode_message(&message);
                assert_eq!(Codec::Cbor.decode_message(kind, &cbor).unwrap(), message, "line {i} cbor");
            }
        }
        // And the whole frame survives CBOR.
        let cbor = Codec::Cbor.encode_frame(&frame);
        assert_eq!(Codec::Cbor.decode_frame(&cbor, &limits).unwrap(), frame, "line {i} cbor frame");
    }
}

const STORE: &str = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b";
const CHANNEL: &str = "0b7e3c1a-9d2f-4c6e-a1b3-5d7f9e1c3a5b";

fn data_frame(payload_b64: &str, control: &str) -> String {
    format!(
        r#"{{"ControlType":"{control}","store_id":"{STORE}","channel_id":"{CHANNEL}","payload":"{payload_b64}"}}"#
    )
}

fn assert_golden(text: &str, inner: &str, kind: Option<MessageKind>) {
    let frame = Codec::Json.decode_frame(text.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(String::from_utf8(Codec::Json.encode_frame(&frame)).unwrap(), text);
    let payload = frame.payload.unwrap();
    assert_eq!(std::str::from_utf8(&payload).unwrap(), inner);
    match kind {
        Some(kind) => {
            let msg = Codec::Json.decode_message(kind, &payload).unwrap();
            assert_eq!(Codec::Json.encode_message(&msg), inner.as_bytes());
        }
        None => {
            let control = StreamControl::parse(Codec::Json, &payload).unwrap();
            assert_eq!(control.encode(Codec::Json), inner.as_bytes());
        }
    }
}

#[test]
fn spec_example_frames() {
    assert_golden(
        &data_frame(
            "eyIkdHlwZSI6InN0cmVhbWtpdDovL2FwaS92MS9wZWVrIiwiY29udGVudCI6eyJzcGFjZSI6InNwYWNlMCIsInNlZ21lbnQiOiJzZWdtZW50MCJ9fQ==",
            "data",
        ),
        r#"{"$type":"streamkit://api/v1/peek","content":{"space":"space0","segment":"segment0"}}"#,
        Some(MessageKind::Envelope),
    );
    assert_golden(
        &data_frame(
            "eyJzZXF1ZW5jZSI6MSwidGltZXN0YW1wIjoxNzE3MTcxNzE3MTcxLCJ0cngiOnsiaWQiOiIzZjJhMWI0Yy01ZDZlLTRmNzAtOGE5Yi0wYzFkMmUzZjRhNWIiLCJub2RlIjoiMDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwIiwibnVtYmVyIjoxfSwicGF5bG9hZCI6ImFHVnNiRzg9Iiwic3BhY2UiOiJzcGFjZTAiLCJzZWdtZW50Ijoic2VnbWVudDAifQ==",
            "data",
        ),
        r#"{"sequence":1,"timestamp":1717171717171,"trx":{"id":"3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b","node":"00000000-0000-0000-0000-000000000000","number":1},"payload":"aGVsbG8=","space":"space0","segment":"segment0"}"#,
        Some(MessageKind::Entry),
    );
    assert_golden(&data_frame("eyJ0eXBlIjoibXV4OjpjbG9zZSJ9", "data"), r#"{"type":"mux::close"}"#, None);
    assert_golden(
        &data_frame(
            "eyJ0eXBlIjoibXV4OjpjbG9zZSIsImVyciI6InNlcXVlbmNlIGdhcDogZXhwZWN0ZWQgMywgZ290IDQifQ==",
            "data",
        ),
        r#"{"type":"mux::close","err":"sequence gap: expected 3, got 4"}"#,
        None,
    );
    assert_golden(
        &data_frame("eyJ0eXBlIjoibXV4OjplcnJvciIsImVyciI6ImFjY2VzcyBkZW5pZWQifQ==", "error"),
        r#"{"type":"mux::error","err":"access denied"}"#,
        None,
    );
    assert_golden(&data_frame("InNwYWNlMCI=", "data"), r#""space0""#, Some(MessageKind::Name));
    assert_golden(
        &data_frame("eyJzZXF1ZW5jZSI6MSwicGF5bG9hZCI6ImFHVnNiRzg9In0=", "data"),
        r#"{"sequence":1,"payload":"aGVsbG8="}"#,
        Some(MessageKind::Record),
    );
    let ping = r#"{"ControlType":"ping","store_id":"00000000-0000-0000-0000-000000000000","channel_id":"00000000-0000-0000-0000-000000000000","payload":null}"#;
    let frame = Codec::Json.decode_frame(ping.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(frame, Frame::control(ControlType::Ping));
    assert_eq!(Codec::Json.encode_frame(&frame), ping.as_bytes());
}

#[test]
fn spec_worker_presence_payloads() {
    for inner in [
        r#"{"$type":"streamkit://api/v1/worker_inventory","content":{"workers":[{"worker_id":"aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa","metadata":{"role":"processor"},"last_seen_at":1717171717171}],"timestamp":1717171717180}}"#,
        r#"{"$type":"streamkit://api/v1/presence","content":{"worker_id":"aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa","heartbeat":true,"timestamp":1717171717200}}"#,
        r#"{"$type":"streamkit://api/v1/worker_inventory","content":{"workers":[],"timestamp":1717171717180}}"#,
    ] {
        let msg = Codec::Json.decode_message(MessageKind::Envelope, inner.as_bytes()).unwrap();
        assert!(matches!(msg, Message::Envelope(_)));
        assert_eq!(std::str::from_utf8(&Codec::Json.encode_message(&msg)).unwrap(), inner);
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        let frame = data_frame(&b64, "data");
        assert_golden(&frame, inner, Some(MessageKind::Envelope));
    }
}
