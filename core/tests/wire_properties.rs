//! Property tests of the wire layer (issue 2).
//!
//! * Every message type, every envelope variant, stream control and frames round-trip through the JSON
//!   and the CBOR codec, and JSON re-encodes to the very same bytes.
//! * JSON output equals what an independent reference encoder written here with Go's `encoding/json`
//!   rules (field order, `omitempty`, HTML-safe string escaping, padded base64, lowercase hex lexkeys)
//!   produces, and is valid JSON for serde_json.
//! * No decoder panics on arbitrary or mutated bytes, and what decodes re-encodes stably.
//! * Frame and payload limits are enforced with `FrameTooLarge` / `PayloadTooLarge` before decoding.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use streamkit_proto::api::*;
use streamkit_proto::lexkey::LexKey;
use streamkit_proto::wire::{
    Codec, ControlType, Frame, Limits, Message, MessageKind, StreamControl, TraceContext, WireError, gojson,
};
use uuid::Uuid;

// ------------------------------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------------------------------

/// Characters that stress the escaper: every short escape, other control characters, the HTML-unsafe
/// `<>&`, U+2028/2029 (and U+2030, which shares their first two UTF-8 bytes), DEL, `/` and non-ASCII.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        3 => select(vec![
            '<', '>', '&', '\u{2028}', '\u{2029}', '\u{2030}', '"', '\\', '/', '\0', '\u{8}', '\u{c}', '\n',
            '\r', '\t', '\u{1}', '\u{1b}', '\u{1f}', '\u{7f}', '\u{80}', 'é', '日', '😀', '\u{fffd}', ' ',
        ]),
        4 => proptest::char::range('a', 'z'),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        6 => vec(tricky_char(), 0..16).prop_map(|c| c.into_iter().collect()),
    ]
}

/// A nil, empty or non-empty payload (Go distinguishes `null` from `""`).
fn payload() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => vec(any::<u8>(), 1..200).prop_map(Some),
    ]
}

/// Metadata maps, often holding the empty key (which Go sorts first).
fn metadata() -> impl Strategy<Value = Metadata> {
    btree_map(prop_oneof![1 => Just(String::new()), 3 => text()], text(), 0..4)
}

fn uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![1 => Just(Uuid::nil()), 3 => any::<u128>().prop_map(Uuid::from_u128)]
}

fn int64() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), -3..3i64, Just(i64::MIN), Just(i64::MAX), any::<i64>()]
}

fn uint64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0..3u64, Just(u64::MAX), any::<u64>()]
}

fn lexkey() -> impl Strategy<Value = LexKey> {
    prop_oneof![1 => Just(LexKey::empty()), 3 => vec(any::<u8>(), 1..40).prop_map(LexKey)]
}

fn record() -> impl Strategy<Value = Record> {
    (uint64(), payload(), metadata()).prop_map(|(sequence, payload, metadata)| Record {
        sequence,
        payload: payload.map(Into::into),
        metadata,
    })
}

fn trx() -> impl Strategy<Value = Trx> {
    (uuid(), uuid(), uint64()).prop_map(|(id, node, number)| Trx { id, node, number })
}

fn entry() -> impl Strategy<Value = Entry> {
    (uint64(), int64(), trx(), payload(), metadata(), text(), text()).prop_map(
        |(sequence, timestamp, trx, payload, metadata, space, segment)| Entry {
            sequence,
            timestamp,
            trx,
            payload: payload.map(Into::into),
            metadata,
            space,
            segment,
        },
    )
}

fn segment_status() -> impl Strategy<Value = SegmentStatus> {
    (text(), text(), uint64(), int64(), uint64(), int64(), any::<bool>()).prop_map(
        |(space, segment, first_sequence, first_timestamp, last_sequence, last_timestamp, heartbeat)| {
            SegmentStatus {
                space,
                segment,
                first_sequence,
                first_timestamp,
                last_sequence,
                last_timestamp,
                heartbeat,
            }
        },
    )
}

fn segment_notification() -> impl Strategy<Value = SegmentNotification> {
    (uuid(), segment_status())
        .prop_map(|(store_id, segment_status)| SegmentNotification { store_id, segment_status })
}

fn lease_result() -> impl Strategy<Value = LeaseResult> {
    (any::<bool>(), text()).prop_map(|(ok, message)| LeaseResult { ok, message })
}

fn worker_info() -> impl Strategy<Value = WorkerInfo> {
    (uuid(), metadata(), int64()).prop_map(|(worker_id, metadata, last_seen_at)| WorkerInfo {
        worker_id,
        metadata,
        last_seen_at,
    })
}

fn worker_inventory() -> impl Strategy<Value = WorkerInventory> {
    (vec(worker_info(), 0..4), int64())
        .prop_map(|(workers, timestamp)| WorkerInventory { workers, timestamp })
}

fn presence() -> impl Strategy<Value = Presence> {
    (uuid(), any::<bool>(), int64()).prop_map(|(worker_id, heartbeat, timestamp)| Presence {
        worker_id,
        heartbeat,
        timestamp,
    })
}

fn worker_inventory_notification() -> impl Strategy<Value = WorkerInventoryNotification> {
    Just(WorkerInventoryNotification {})
}

fn produce() -> impl Strategy<Value = Produce> {
    (text(), text()).prop_map(|(space, segment)| Produce { space, segment })
}

fn peek() -> impl Strategy<Value = Peek> {
    (text(), text()).prop_map(|(space, segment)| Peek { space, segment })
}

fn consume_segment() -> impl Strategy<Value = ConsumeSegment> {
    (text(), text(), uint64(), int64(), uint64(), int64(), uint64()).prop_map(
        |(space, segment, min_sequence, min_timestamp, max_sequence, max_timestamp, limit)| ConsumeSegment {
            space,
            segment,
            min_sequence,
            min_timestamp,
            max_sequence,
            max_timestamp,
            limit,
        },
    )
}

fn consume_space() -> impl Strategy<Value = ConsumeSpace> {
    (text(), int64(), int64(), lexkey(), uint64()).prop_map(
        |(space, min_timestamp, max_timestamp, offset, limit)| ConsumeSpace {
            space,
            min_timestamp,
            max_timestamp,
            offset,
            limit,
        },
    )
}

fn consume() -> impl Strategy<Value = Consume> {
    (int64(), int64(), btree_map(text(), lexkey(), 0..4), uint64()).prop_map(
        |(min_timestamp, max_timestamp, offsets, limit)| Consume {
            min_timestamp,
            max_timestamp,
            offsets,
            limit,
        },
    )
}

fn get_spaces() -> impl Strategy<Value = GetSpaces> {
    Just(GetSpaces {})
}

fn get_segments() -> impl Strategy<Value = GetSegments> {
    text().prop_map(|space| GetSegments { space })
}

fn get_status() -> impl Strategy<Value = GetStatus> {
    Just(GetStatus {})
}

fn subscribe_to_segment_status() -> impl Strategy<Value = SubscribeToSegmentStatus> {
    (text(), prop_oneof![Just("*".to_string()), text()], int64()).prop_map(
        |(space, segment, heartbeat_interval_seconds)| SubscribeToSegmentStatus {
            space,
            segment,
            heartbeat_interval_seconds,
        },
    )
}

fn subscribe_workers() -> impl Strategy<Value = SubscribeWorkers> {
    (uuid(), metadata(), int64()).prop_map(|(worker_id, metadata, heartbeat_interval_seconds)| {
        SubscribeWorkers { worker_id, metadata, heartbeat_interval_seconds }
    })
}

fn lease_acquire() -> impl Strategy<Value = LeaseAcquire> {
    (text(), text(), int64()).prop_map(|(key, holder, ttl_seconds)| LeaseAcquire { key, holder, ttl_seconds })
}

fn lease_renew() -> impl Strategy<Value = LeaseRenew> {
    (text(), text(), int64()).prop_map(|(key, holder, ttl_seconds)| LeaseRenew { key, holder, ttl_seconds })
}

fn lease_release() -> impl Strategy<Value = LeaseRelease> {
    (text(), text()).prop_map(|(key, holder)| LeaseRelease { key, holder })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        produce().prop_map(Request::Produce),
        peek().prop_map(Request::Peek),
        consume_segment().prop_map(Request::ConsumeSegment),
        consume_space().prop_map(Request::ConsumeSpace),
        consume().prop_map(Request::Consume),
        get_spaces().prop_map(Request::GetSpaces),
        get_segments().prop_map(Request::GetSegments),
        subscribe_to_segment_status().prop_map(Request::SubscribeToSegmentStatus),
        subscribe_workers().prop_map(Request::SubscribeWorkers),
        lease_acquire().prop_map(Request::LeaseAcquire),
        lease_renew().prop_map(Request::LeaseRenew),
        lease_release().prop_map(Request::LeaseRelease),
    ]
}

/// Every envelope variant: the requests plus the types that are not requests.
fn envelope() -> impl Strategy<Value = Envelope> {
    prop_oneof![
        12 => request().prop_map(Request::into_envelope),
        1 => get_status().prop_map(Envelope::GetStatus),
        1 => segment_notification().prop_map(Envelope::SegmentNotification),
        1 => segment_status().prop_map(Envelope::SegmentStatus),
        1 => lease_result().prop_map(Envelope::LeaseResult),
        1 => worker_inventory().prop_map(|i| Envelope::WorkerInventory(std::sync::Arc::new(i))),
        1 => presence().prop_map(Envelope::Presence),
        1 => worker_inventory_notification().prop_map(Envelope::WorkerInventoryNotification),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        envelope().prop_map(Message::Envelope),
        record().prop_map(Message::Record),
        entry().prop_map(Message::Entry),
        segment_status().prop_map(Message::Status),
        lease_result().prop_map(Message::LeaseResult),
        text().prop_map(Message::Name),
    ]
}

/// Stream-control values in their canonical form (a `Close` error is never the empty text: Go's
/// `omitempty` makes `{"type":"mux::close","err":""}` a plain close).
fn stream_control() -> impl Strategy<Value = StreamControl> {
    prop_oneof![
        Just(StreamControl::close()),
        text().prop_map(StreamControl::close_with),
        text().prop_map(StreamControl::error),
        (text(), text())
            .prop_map(|(kind, err)| StreamControl::Unknown { kind: format!("mux::{kind}"), err })
            .prop_filter("known mux types", |c| !matches!(
                c,
                StreamControl::Unknown { kind, .. } if kind == "mux::close" || kind == "mux::error"
            )),
    ]
}

fn control_type() -> impl Strategy<Value = ControlType> {
    prop_oneof![
        4 => select(vec![
            ControlType::Data,
            ControlType::Ping,
            ControlType::Pong,
            ControlType::Close,
            ControlType::Error,
        ]),
        1 => text().prop_map(|s| ControlType::parse(&s)),
    ]
}

fn trace_context() -> impl Strategy<Value = TraceContext> {
    prop_oneof![
        2 => Just(TraceContext::new()),
        1 => btree_map(
            prop_oneof![Just("traceparent".to_string()), Just("tracestate".to_string()), text()],
            text(),
            1..3
        ),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (control_type(), uuid(), uuid(), payload(), trace_context()).prop_map(
        |(control, store_id, channel_id, payload, trace_context)| Frame {
            control,
            store_id,
            channel_id,
            payload,
            trace_context,
        },
    )
}

// ------------------------------------------------------------------------------------------------
// An independent reference of Go's `encoding/json` output
// ------------------------------------------------------------------------------------------------

/// Go (1.22+) `encoding/json` string quoting with HTML escaping, written per character, independently of
/// the byte-oriented `gojson::write_str`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\u{1f}' | '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                write!(out, "\\u{:04x}", c as u32).unwrap()
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn go_bytes<B: AsRef<[u8]>>(b: &Option<B>) -> String {
    match b {
        None => "null".into(),
        Some(b) => format!("\"{}\"", base64::engine::general_purpose::STANDARD.encode(b.as_ref())),
    }
}

fn go_uuid(u: &Uuid) -> String {
    format!("\"{}\"", u.hyphenated())
}

fn go_hex(k: &LexKey) -> String {
    let mut out = String::from("\"");
    for b in k.as_bytes() {
        write!(out, "{b:02x}").unwrap();
    }
    out.push('"');
    out
}

fn go_map<V>(m: &BTreeMap<String, V>, value: impl Fn(&V) -> String) -> String {
    // Go sorts map keys bytewise, which is `String`'s `Ord`.
    let fields: Vec<String> = m.iter().map(|(k, v)| format!("{}:{}", go_quote(k), value(v))).collect();
    format!("{{{}}}", fields.join(","))
}

/// A JSON object builder: `field` always writes, `omitempty` writes only when `present`.
struct Obj(Vec<String>);

impl Obj {
    fn new() -> Self {
        Obj(Vec::new())
    }
    fn field(mut self, name: &str, value: impl Into<String>) -> Self {
        self.0.push(format!("{}:{}", go_quote(name), value.into()));
        self
    }
    fn omitempty(self, name: &str, present: bool, value: impl Into<String>) -> Self {
        if present { self.field(name, value) } else { self }
    }
    fn end(self) -> String {
        format!("{{{}}}", self.0.join(","))
    }
}

/// What Go's `json.Marshal` writes for a value.
trait GoJson {
    fn go_json(&self) -> String;
}

impl GoJson for String {
    fn go_json(&self) -> String {
        go_quote(self)
    }
}

impl GoJson for Record {
    fn go_json(&self) -> String {
        Obj::new()
            .field("sequence", self.sequence.to_string())
            .field("payload", go_bytes(&self.payload))
            .omitempty("metadata", !self.metadata.is_empty(), go_map(&self.metadata, |v| go_quote(v)))
            .end()
    }
}

impl GoJson for Trx {
    fn go_json(&self) -> String {
        Obj::new()
            .field("id", go_uuid(&self.id))
            .field("node", go_uuid(&self.node))
            .field("number", self.number.to_string())
            .end()
    }
}

impl GoJson for Entry {
    fn go_json(&self) -> String {
        Obj::new()
            .field("sequence", self.sequence.to_string())
            .omitempty("timestamp", self.timestamp != 0, self.timestamp.to_string())
            .field("trx", self.trx.go_json())
            .field("payload", go_bytes(&self.payload))
            .omitempty("metadata", !self.metadata.is_empty(), go_map(&self.metadata, |v| go_quote(v)))
            .field("space", go_quote(&self.space))
            .field("segment", go_quote(&self.segment))
            .end()
    }
}

impl GoJson for SegmentStatus {
    fn go_json(&self) -> String {
        Obj::new()
            .field("space", go_quote(&self.space))
            .field("segment", go_quote(&self.segment))
            .field("first_sequence", self.first_sequence.to_string())
            .field("first_timestamp", self.first_timestamp.to_string())
            .field("last_sequence", self.last_sequence.to_string())
            .field("last_timestamp", self.last_timestamp.to_string())
            .field("heartbeat", self.heartbeat.to_string())
            .end()
    }
}

impl GoJson for SegmentNotification {
    fn go_json(&self) -> String {
        Obj::new()
            .field("store_id", go_uuid(&self.store_id))
            .field("segment_status", self.segment_status.go_json())
            .end()
    }
}

impl GoJson for LeaseResult {
    fn go_json(&self) -> String {
        Obj::new()
            .field("ok", self.ok.to_string())
            .omitempty("message", !self.message.is_empty(), go_quote(&self.message))
            .end()
    }
}

impl GoJson for WorkerInfo {
    fn go_json(&self) -> String {
        Obj::new()
            .field("worker_id", go_uuid(&self.worker_id))
            .omitempty("metadata", !self.metadata.is_empty(), go_map(&self.metadata, |v| go_quote(v)))
            .field("last_seen_at", self.last_seen_at.to_string())
            .end()
    }
}

impl GoJson for WorkerInventory {
    fn go_json(&self) -> String {
        let workers: Vec<String> = self.workers.iter().map(GoJson::go_json).collect();
        Obj::new()
            .field("workers", format!("[{}]", workers.join(",")))
            .field("timestamp", self.timestamp.to_string())
            .end()
    }
}

impl GoJson for Presence {
    fn go_json(&self) -> String {
        Obj::new()
            .field("worker_id", go_uuid(&self.worker_id))
            .field("heartbeat", self.heartbeat.to_string())
            .field("timestamp", self.timestamp.to_string())
            .end()
    }
}

impl GoJson for WorkerInventoryNotification {
    fn go_json(&self) -> String {
        "{}".into()
    }
}

impl GoJson for Produce {
    fn go_json(&self) -> String {
        Obj::new().field("space", go_quote(&self.space)).field("segment", go_quote(&self.segment)).end()
    }
}

impl GoJson for Peek {
    fn go_json(&self) -> String {
        Obj::new().field("space", go_quote(&self.space)).field("segment", go_quote(&self.segment)).end()
    }
}

impl GoJson for ConsumeSegment {
    fn go_json(&self) -> String {
        Obj::new()
            .field("space", go_quote(&self.space))
            .field("segment", go_quote(&self.segment))
            .omitempty("min_sequence", self.min_sequence != 0, self.min_sequence.to_string())
            .omitempty("min_timestamp", self.min_timestamp != 0, self.min_timestamp.to_string())
            .omitempty("max_sequence", self.max_sequence != 0, self.max_sequence.to_string())
            .omitempty("max_timestamp", self.max_timestamp != 0, self.max_timestamp.to_string())
            .omitempty("limit", self.limit != 0, self.limit.to_string())
            .end()
    }
}

impl GoJson for ConsumeSpace {
    fn go_json(&self) -> String {
        Obj::new()
            .field("space", go_quote(&self.space))
            .omitempty("min_timestamp", self.min_timestamp != 0, self.min_timestamp.to_string())
            .omitempty("max_timestamp", self.max_timestamp != 0, self.max_timestamp.to_string())
            .omitempty("offset", !self.offset.is_empty(), go_hex(&self.offset))
            .omitempty("limit", self.limit != 0, self.limit.to_string())
            .end()
    }
}

impl GoJson for Consume {
    fn go_json(&self) -> String {
        Obj::new()
            .omitempty("min_timestamp", self.min_timestamp != 0, self.min_timestamp.to_string())
            .omitempty("max_timestamp", self.max_timestamp != 0, self.max_timestamp.to_string())
            .omitempty("offsets", !self.offsets.is_empty(), go_map(&self.offsets, go_hex))
            .omitempty("limit", self.limit != 0, self.limit.to_string())
            .end()
    }
}

impl GoJson for GetSpaces {
    fn go_json(&self) -> String {
        "{}".into()
    }
}

impl GoJson for GetSegments {
    fn go_json(&self) -> String {
        Obj::new().field("space", go_quote(&self.space)).end()
    }
}

impl GoJson for GetStatus {
    fn go_json(&self) -> String {
        "{}".into()
    }
}

impl GoJson for SubscribeToSegmentStatus {
    fn go_json(&self) -> String {
        Obj::new()
            .field("space", go_quote(&self.space))
            .field("segment", go_quote(&self.segment))
            .field("heartbeat_interval_seconds", self.heartbeat_interval_seconds.to_string())
            .end()
    }
}

impl GoJson for SubscribeWorkers {
    fn go_json(&self) -> String {
        Obj::new()
            .field("worker_id", go_uuid(&self.worker_id))
            .omitempty("metadata", !self.metadata.is_empty(), go_map(&self.metadata, |v| go_quote(v)))
            .field("heartbeat_interval_seconds", self.heartbeat_interval_seconds.to_string())
            .end()
    }
}

impl GoJson for LeaseAcquire {
    fn go_json(&self) -> String {
        Obj::new()
            .field("key", go_quote(&self.key))
            .field("holder", go_quote(&self.holder))
            .field("ttl_seconds", self.ttl_seconds.to_string())
            .end()
    }
}

impl GoJson for LeaseRenew {
    fn go_json(&self) -> String {
        Obj::new()
            .field("key", go_quote(&self.key))
            .field("holder", go_quote(&self.holder))
            .field("ttl_seconds", self.ttl_seconds.to_string())
            .end()
    }
}

impl GoJson for LeaseRelease {
    fn go_json(&self) -> String {
        Obj::new().field("key", go_quote(&self.key)).field("holder", go_quote(&self.holder)).end()
    }
}

impl GoJson for Envelope {
    fn go_json(&self) -> String {
        // The discriminators of PROTOCOL.md §1.1, listed here independently of `Envelope::type_name`.
        let (suffix, content) = match self {
            Envelope::ConsumeSegment(c) => ("consume_segment", c.go_json()),
            Envelope::ConsumeSpace(c) => ("consume_space", c.go_json()),
            Envelope::Consume(c) => ("consume", c.go_json()),
            Envelope::GetSegments(c) => ("get_segments", c.go_json()),
            Envelope::GetSpaces(c) => ("get_spaces", c.go_json()),
            Envelope::GetStatus(c) => ("get_status", c.go_json()),
            Envelope::Peek(c) => ("peek", c.go_json()),
            Envelope::Produce(c) => ("produce", c.go_json()),
            Envelope::SegmentNotification(c) => ("segment_notification", c.go_json()),
            Envelope::SegmentStatus(c) => ("segment_status", c.go_json()),
            Envelope::SubscribeToSegmentStatus(c) => ("subscribe_to_segment_status", c.go_json()),
            Envelope::LeaseAcquire(c) => ("lease_acquire", c.go_json()),
            Envelope::LeaseRenew(c) => ("lease_renew", c.go_json()),
            Envelope::LeaseRelease(c) => ("lease_release", c.go_json()),
            Envelope::LeaseResult(c) => ("lease_result", c.go_json()),
            Envelope::SubscribeWorkers(c) => ("subscribe_workers", c.go_json()),
            Envelope::WorkerInventory(c) => ("worker_inventory", c.go_json()),
            Envelope::Presence(c) => ("presence", c.go_json()),
            Envelope::WorkerInventoryNotification(c) => ("worker_inventory_notification", c.go_json()),
        };
        Obj::new()
            .field("$type", go_quote(&format!("streamkit://api/v1/{suffix}")))
            .field("content", content)
            .end()
    }
}

impl GoJson for Message {
    fn go_json(&self) -> String {
        match self {
            Message::Envelope(m) => m.go_json(),
            Message::Record(m) => m.go_json(),
            Message::Entry(m) => m.go_json(),
            Message::Status(m) => m.go_json(),
            Message::LeaseResult(m) => m.go_json(),
            Message::Name(m) => m.go_json(),
        }
    }
}

impl GoJson for StreamControl {
    fn go_json(&self) -> String {
        let (kind, err) = match self {
            StreamControl::Close { err } => ("mux::close", err.clone().unwrap_or_default()),
            StreamControl::Error { err } => ("mux::error", err.clone()),
            StreamControl::Unknown { kind, err } => (kind.as_str(), err.clone()),
        };
        Obj::new().field("type", go_quote(kind)).omitempty("err", !err.is_empty(), go_quote(&err)).end()
    }
}

impl GoJson for Frame {
    fn go_json(&self) -> String {
        let control = match &self.control {
            ControlType::Data => "data",
            ControlType::Ping => "ping",
            ControlType::Pong => "pong",
            ControlType::Close => "close",
            ControlType::Error => "error",
            ControlType::Unknown(s) => s,
        };
        Obj::new()
            .field("ControlType", go_quote(control))
            .field("store_id", go_uuid(&self.store_id))
            .field("channel_id", go_uuid(&self.channel_id))
            .field("payload", go_bytes(&self.payload))
            .omitempty(
                "trace_context",
                !self.trace_context.is_empty(),
                go_map(&self.trace_context, |v| go_quote(v)),
            )
            .end()
    }
}

// ------------------------------------------------------------------------------------------------
// Round-trip checks
// ------------------------------------------------------------------------------------------------

/// JSON: output equals the Go reference, is valid JSON, decodes to an equal value and re-encodes to the
/// same bytes.
fn check_json<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + GoJson + PartialEq + std::fmt::Debug,
{
    let bytes = Codec::Json.encode_value(value);
    prop_assert_eq!(&bytes, &gojson::to_vec(value).unwrap(), "Codec::Json is the Go JSON writer");
    let text = std::str::from_utf8(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(text.to_string(), value.go_json(), "Go's encoding/json output");
    prop_assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(), "valid JSON: {}", text);
    let decoded: T = Codec::Json.decode_value(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, value);
    prop_assert_eq!(Codec::Json.encode_value(&decoded), bytes, "re-encoding is byte-identical");
    Ok(())
}

/// CBOR: decodes to an equal value and re-encodes to the same bytes.
fn check_cbor<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = Codec::Cbor.encode_value(value);
    let decoded: T = Codec::Cbor.decode_value(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, value);
    prop_assert_eq!(Codec::Cbor.encode_value(&decoded), bytes);
    Ok(())
}

macro_rules! message_type_properties {
    ($($module:ident: $ty:ty = $strategy:expr;)*) => {$(
        mod $module {
            use super::*;

            proptest! {
                #[test]
                fn json_round_trip_matches_go(value in $strategy) {
                    check_json::<$ty>(&value)?;
                }

                #[test]
                fn cbor_round_trip(value in $strategy) {
                    check_cbor::<$ty>(&value)?;
                }
            }
        }
    )*};
}

message_type_properties! {
    record_type: Record = record();
    trx_type: Trx = trx();
    entry_type: Entry = entry();
    segment_status_type: SegmentStatus = segment_status();
    segment_notification_type: SegmentNotification = segment_notification();
    lease_result_type: LeaseResult = lease_result();
    worker_info_type: WorkerInfo = worker_info();
    worker_inventory_type: WorkerInventory = worker_inventory();
    presence_type: Presence = presence();
    worker_inventory_notification_type: WorkerInventoryNotification = worker_inventory_notification();
    produce_type: Produce = produce();
    peek_type: Peek = peek();
    consume_segment_type: ConsumeSegment = consume_segment();
    consume_space_type: ConsumeSpace = consume_space();
    consume_type: Consume = consume();
    get_spaces_type: GetSpaces = get_spaces();
    get_segments_type: GetSegments = get_segments();
    get_status_type: GetStatus = get_status();
    subscribe_to_segment_status_type: SubscribeToSegmentStatus = subscribe_to_segment_status();
    subscribe_workers_type: SubscribeWorkers = subscribe_workers();
    lease_acquire_type: LeaseAcquire = lease_acquire();
    lease_renew_type: LeaseRenew = lease_renew();
    lease_release_type: LeaseRelease = lease_release();
    name_type: String = text();
}

proptest! {
    #[test]
    fn strings_are_escaped_like_go(s in prop_oneof![text(), any::<String>()]) {
        let mut out = Vec::new();
        gojson::write_str(&mut out, &s);
        let text = String::from_utf8(out).unwrap();
        prop_assert_eq!(&text, &go_quote(&s));
        prop_assert_eq!(serde_json::from_str::<String>(&text).unwrap(), s);
    }

    #[test]
    fn envelopes_round_trip_in_both_codecs(env in envelope()) {
        let json = Codec::Json.encode_value(&env);
        prop_assert_eq!(String::from_utf8(json.clone()).unwrap(), env.go_json());
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        let decoded = Envelope::from_json(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &env);
        prop_assert_eq!(Codec::Json.encode_value(&decoded), json);

        let cbor = Codec::Cbor.encode_value(&env);
        let decoded = Envelope::from_cbor(&cbor).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &env);
        prop_assert_eq!(Codec::Cbor.encode_value(&decoded), cbor);
    }

    #[test]
    fn requests_travel_in_their_envelope(req in request()) {
        let env = req.clone().into_envelope();
        prop_assert!(!req.op_name().is_empty());
        prop_assert_eq!(env.clone().into_request(), Ok(req));
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = codec.encode_value(&env);
            let decoded = codec.decode_message(MessageKind::Envelope, &bytes)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded, Message::Envelope(env.clone()));
        }
    }

    #[test]
    fn messages_round_trip_by_kind(msg in message()) {
        let json = Codec::Json.encode_message(&msg);
        prop_assert_eq!(String::from_utf8(json.clone()).unwrap(), msg.go_json());
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = codec.encode_message(&msg);
            // Application data is never mistaken for stream control.
            prop_assert_eq!(StreamControl::parse(codec, &bytes), None);
            let decoded = codec.decode_message(msg.kind(), &bytes)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&decoded, &msg);
            prop_assert_eq!(codec.encode_message(&decoded), bytes);
        }
    }

    #[test]
    fn stream_control_round_trips(control in stream_control()) {
        let json = control.encode(Codec::Json);
        prop_assert_eq!(String::from_utf8(json.clone()).unwrap(), control.go_json());
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = control.encode(codec);
            prop_assert_eq!(StreamControl::parse(codec, &bytes), Some(control.clone()));
        }
    }

    #[test]
    fn frames_round_trip(frame in frame()) {
        let limits = Limits::default();
        let json = Codec::Json.encode_frame(&frame);
        prop_assert_eq!(String::from_utf8(json.clone()).unwrap(), frame.go_json());
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        for codec in [Codec::Json, Codec::Cbor] {
            let bytes = codec.encode_frame(&frame);
            let decoded = codec.decode_frame(&bytes, &limits).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&decoded, &frame);
            prop_assert_eq!(codec.encode_frame(&decoded), bytes);
        }
    }

    /// A whole data frame carrying an encoded message: what really crosses a socket.
    #[test]
    fn frames_carry_messages(msg in message(), store in uuid(), channel in uuid()) {
        for codec in [Codec::Json, Codec::Cbor] {
            let frame = Frame::data(store, channel, codec.encode_message(&msg));
            let bytes = codec.encode_frame(&frame);
            let decoded = codec.decode_frame(&bytes, &Limits::default())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let inner = decoded.payload.as_deref().unwrap_or_default();
            prop_assert_eq!(codec.decode_message(msg.kind(), inner).ok(), Some(msg.clone()));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Decoders never panic; what decodes re-encodes stably
// ------------------------------------------------------------------------------------------------

/// Runs every decoder of the wire layer over `bytes`; whatever decodes must re-encode and decode again
/// to an equal value.
fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits { max_frame: 1 << 16, max_payload: 1 << 15 };
    for codec in [Codec::Json, Codec::Cbor] {
        if let Ok(frame) = codec.decode_frame(bytes, &limits) {
            let again = codec.decode_frame(&codec.encode_frame(&frame), &limits);
            prop_assert_eq!(again.as_ref(), Ok(&frame));
            if let Some(payload) = &frame.payload {
                decode_inner(codec, payload)?;
            }
        }
        decode_inner(codec, bytes)?;
    }
    let _ = Envelope::from_json(bytes);
    let _ = Envelope::from_cbor(bytes);
    Ok(())
}

fn decode_inner(codec: Codec, bytes: &[u8]) -> Result<(), TestCaseError> {
    for kind in MessageKind::ALL {
        if let Ok(msg) = codec.decode_message(kind, bytes) {
            prop_assert_eq!(msg.kind(), kind);
            let again = codec.decode_message(kind, &codec.encode_message(&msg));
            prop_assert_eq!(again.as_ref(), Ok(&msg));
        }
    }
    if let Some(control) = StreamControl::parse(codec, bytes) {
        prop_assert_eq!(StreamControl::parse(codec, &control.encode(codec)), Some(control));
    }
    Ok(())
}

/// Fragments of the protocol's JSON, so random concatenations reach deep into the decoders.
fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    let tokens = vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "null",
        "true",
        "false",
        "0",
        "-1",
        "1e3",
        "18446744073709551616",
        "\"\"",
        "\"$type\"",
        "\"content\"",
        "\"streamkit://api/v1/peek\"",
        "\"streamkit://api/v1/consume\"",
        "\"streamkit://api/v1/worker_inventory\"",
        "\"streamkit://api/v1/\"",
        "\"type\"",
        "\"err\"",
        "\"mux::close\"",
        "\"mux::error\"",
        "\"mux::x\"",
        "\"ControlType\"",
        "\"data\"",
        "\"store_id\"",
        "\"channel_id\"",
        "\"payload\"",
        "\"trace_context\"",
        "\"aGk=\"",
        "\"aGk\"",
        "\"00\"",
        "\"0g\"",
        "\"6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b\"",
        "\"sequence\"",
        "\"metadata\"",
        "\"offsets\"",
        "\"offset\"",
        "\"workers\"",
        "\"trx\"",
        "\"space\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\u2028\"",
        " ",
        "\"é\"",
    ];
    vec(select(tokens), 0..40).prop_map(|t| t.concat().into_bytes())
}

/// Small edits of a valid encoding: flip, insert, remove or truncate.
fn mutated(bytes: Vec<u8>, edits: Vec<(u8, usize, u8)>) -> Vec<u8> {
    let mut bytes = bytes;
    for (op, at, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let at = at % bytes.len();
        match op % 4 {
            0 => bytes[at] ^= byte | 1,
            1 => bytes.insert(at, byte),
            2 => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decoders_survive_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes)?;
    }

    #[test]
    fn decoders_survive_json_soup(bytes in json_soup()) {
        decode_everything(&bytes)?;
    }

    #[test]
    fn decoders_survive_mutated_messages(msg in message(), cbor in any::<bool>(), edits in edits()) {
        let codec = if cbor { Codec::Cbor } else { Codec::Json };
        decode_everything(&mutated(codec.encode_message(&msg), edits))?;
    }

    #[test]
    fn decoders_survive_mutated_frames(frame in frame(), cbor in any::<bool>(), edits in edits()) {
        let codec = if cbor { Codec::Cbor } else { Codec::Json };
        decode_everything(&mutated(codec.encode_frame(&frame), edits))?;
    }

    /// Valid frames around mutated inner messages, so the inner decoders see garbage after a successful
    /// frame decode.
    #[test]
    fn decoders_survive_mutated_payloads(msg in message(), cbor in any::<bool>(), edits in edits()) {
        let codec = if cbor { Codec::Cbor } else { Codec::Json };
        let inner = mutated(codec.encode_message(&msg), edits);
        decode_everything(&codec.encode_frame(&Frame::data(Uuid::nil(), Uuid::nil(), inner)))?;
    }

    #[test]
    fn stream_control_parse_survives_mutations(control in stream_control(), cbor in any::<bool>(), edits in edits()) {
        let codec = if cbor { Codec::Cbor } else { Codec::Json };
        decode_inner(codec, &mutated(control.encode(codec), edits))?;
    }
}

// ------------------------------------------------------------------------------------------------
// Limits
// ------------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn frames_over_the_limit_are_refused_before_decoding(frame in frame(), cbor in any::<bool>()) {
        let codec = if cbor { Codec::Cbor } else { Codec::Json };
        let bytes = codec.encode_frame(&frame);
        let len = bytes.len();
        let big = usize::MAX;
        let at = Limits { max_frame: len, max_payload: big };
        prop_assert_eq!(codec.decode_frame(&bytes, &at), Ok(frame.clone()));
        let under = Limits { max_frame: len - 1, max_payload: big };
        prop_assert_eq!(
            codec.decode_frame(&bytes, &under),
            Err(WireError::FrameTooLarge { len, limit: len - 1 })
        );
        // Garbage of the same size is refused for its size, not parsed.
        let garbage = vec![0xffu8; len];
        prop_assert_eq!(
            codec.decode_frame(&garbage, &under),
            Err(WireError::FrameTooLarge { len, limit: len - 1 })
        );
    }

    #[test]
    fn payloads_over_the_limit_are_refused(
        frame in frame().prop_filter("has a payload", |f| f.payload.as_ref().is_some_and(|p| !p.is_empty())),
        cbor in any::<bool>(),
    ) {
        let codec = if cbor { Codec::Cbor } else { Codec::Json };
        let bytes = codec.encode_frame(&frame);
        let len = frame.payload.as_ref().map_or(0, |p| p.len());
        let at = Limits { max_frame: bytes.len(), max_payload: len };
        prop_assert_eq!(codec.decode_frame(&bytes, &at), Ok(frame.clone()));
        let under = Limits { max_frame: bytes.len(), max_payload: len - 1 };
        prop_assert_eq!(
            codec.decode_frame(&bytes, &under),
            Err(WireError::PayloadTooLarge { len, limit: len - 1 })
        );
    }

    /// A JSON payload is measured on its base64 text, so even text that is not base64 at all is refused
    /// for its size before anything is decoded or allocated.
    #[test]
    fn json_payload_limit_precedes_base64_decoding(n in 1usize..64) {
        let limits = Limits { max_frame: 1 << 16, max_payload: 3 * n - 1 };
        let text = format!(r#"{{"ControlType":"data","payload":"{}"}}"#, "!".repeat(4 * n));
        prop_assert_eq!(
            Codec::Json.decode_frame(text.as_bytes(), &limits),
            Err(WireError::PayloadTooLarge { len: 3 * n, limit: 3 * n - 1 })
        );
        let ok = Limits { max_frame: 1 << 16, max_payload: 3 * n };
        prop_assert!(matches!(Codec::Json.decode_frame(text.as_bytes(), &ok), Err(WireError::Malformed(_))));
    }
}

#[test]
fn default_limits_are_go_s() {
    let limits = Limits::default();
    assert_eq!(limits.max_frame, 8 << 20);
    assert_eq!(limits.max_payload, 6 << 20);
    assert_eq!(limits.check_frame(8 << 20), Ok(()));
    assert_eq!(
        limits.check_frame((8 << 20) + 1),
        Err(WireError::FrameTooLarge { len: (8 << 20) + 1, limit: 8 << 20 })
    );
    assert_eq!(
        limits.check_payload((6 << 20) + 1),
        Err(WireError::PayloadTooLarge { len: (6 << 20) + 1, limit: 6 << 20 })
    );
}

// ------------------------------------------------------------------------------------------------
// The hand-written CBOR codec (`wire::cbor_fast`) against ciborium
// ------------------------------------------------------------------------------------------------

mod cbor_fast_vs_ciborium {
    use super::*;
    use ciborium::Value;
    use streamkit_proto::wire::{cbor, cbor_fast};

    fn ciborium_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    /// ciborium's encoding of a frame (the serde tuple of `wire::cbor`).
    fn ciborium_frame(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        cbor::write_frame(frame, &mut out);
        out
    }

    const UNLIMITED: Limits = Limits { max_frame: usize::MAX, max_payload: usize::MAX };

    /// On any input: whatever the fast path decodes, ciborium decodes to the same value, and the codec
    /// (fast path, else ciborium) answers exactly as ciborium alone.
    fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let by_ciborium = cbor::read_frame(bytes).ok();
        if let Some(view) = cbor_fast::parse_frame(bytes) {
            prop_assert_eq!(by_ciborium.as_ref(), Some(&view.into_frame()), "frame");
        }
        prop_assert_eq!(Frame::from_cbor(bytes, &UNLIMITED).ok(), by_ciborium);

        let record = cbor::from_slice::<Record>(bytes).ok();
        if let Some(fast) = cbor_fast::parse_record(&bytes::Bytes::copy_from_slice(bytes)) {
            prop_assert_eq!(record.as_ref(), Some(&fast), "record");
        }
        prop_assert_eq!(
            Codec::Cbor.decode_message(MessageKind::Record, bytes).ok(),
            record.map(Message::Record)
        );

        let entry = cbor::from_slice::<Entry>(bytes).ok();
        if let Some(fast) = cbor_fast::parse_entry(&bytes::Bytes::copy_from_slice(bytes)) {
            prop_assert_eq!(entry.as_ref(), Some(&fast), "entry");
        }
        prop_assert_eq!(
            Codec::Cbor.decode_message(MessageKind::Entry, bytes).ok(),
            entry.map(Message::Entry)
        );
        Ok(())
    }

    /// How to re-encode a decoded CBOR value: other valid encodings of the same data.
    #[derive(Clone, Copy, Debug)]
    enum Style {
        /// Map entries rotated by the given amount (another key order).
        Rotated(usize),
        /// Every head with an 8-byte argument.
        NonMinimal,
        /// Indefinite-length strings, arrays and maps.
        Indefinite,
    }

    fn head(out: &mut Vec<u8>, style: Style, major: u8, value: u64) {
        match style {
            Style::NonMinimal => {
                out.push(major << 5 | 27);
                out.extend_from_slice(&value.to_be_bytes());
            }
            _ => out.extend_from_slice(&minimal_head(major, value)),
        }
    }

    fn minimal_head(major: u8, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&value, &mut out).unwrap();
        out[0] = out[0] & 0x1f | major << 5;
        out
    }

    fn rewrite(value: &Value, style: Style, out: &mut Vec<u8>) {
        let indefinite = matches!(style, Style::Indefinite);
        match value {
            Value::Integer(i) => {
                let i = i128::from(*i);
                if i < 0 {
                    head(out, style, 1, (-1 - i) as u64);
                } else {
                    head(out, style, 0, i as u64);
                }
            }
            Value::Bytes(_) | Value::Text(_) if indefinite => {
                let (major, data) = match value {
                    Value::Bytes(b) => (2u8, b.as_slice()),
                    Value::Text(t) => (3u8, t.as_bytes()),
                    _ => unreachable!(),
                };
                out.push(major << 5 | 31);
                // Two chunks when possible; text is split on a character boundary.
                let mut mid = data.len() / 2;
                while major == 3 && std::str::from_utf8(&data[..mid]).is_err() {
                    mid -= 1;
                }
                for chunk in [&data[..mid], &data[mid..]] {
                    head(out, style, major, chunk.len() as u64);
                    out.extend_from_slice(chunk);
                }
                out.push(0xff);
            }
            Value::Bytes(b) => {
                head(out, style, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Text(t) => {
                head(out, style, 3, t.len() as u64);
                out.extend_from_slice(t.as_bytes());
            }
            Value::Array(items) => {
                if indefinite {
                    out.push(4 << 5 | 31);
                } else {
                    head(out, style, 4, items.len() as u64);
                }
                for item in items {
                    rewrite(item, style, out);
                }
                if indefinite {
                    out.push(0xff);
                }
            }
            Value::Map(pairs) => {
                let mut pairs = pairs.clone();
                if let Style::Rotated(n) = style
                    && !pairs.is_empty()
                {
                    let n = n % pairs.len();
                    pairs.rotate_left(n);
                }
                if indefinite {
                    out.push(5 << 5 | 31);
                } else {
                    head(out, style, 5, pairs.len() as u64);
                }
                for (k, v) in &pairs {
                    rewrite(k, style, out);
                    rewrite(v, style, out);
                }
                if indefinite {
                    out.push(0xff);
                }
            }
            other => ciborium::into_writer(other, &mut *out).unwrap(),
        }
    }

    fn restyled(bytes: &[u8], style: Style) -> Vec<u8> {
        let value: Value = ciborium::from_reader(bytes).unwrap();
        let mut out = Vec::new();
        rewrite(&value, style, &mut out);
        out
    }

    fn style() -> impl Strategy<Value = Style> {
        prop_oneof![any::<usize>().prop_map(Style::Rotated), Just(Style::NonMinimal), Just(Style::Indefinite),]
    }

    proptest! {
        #[test]
        fn writes_exactly_what_ciborium_writes(frame in frame(), record in record(), entry in entry()) {
            let mut out = Vec::new();
            cbor_fast::write_frame(&frame, &mut out);
            prop_assert_eq!(&out, &ciborium_frame(&frame), "frame");
            out.clear();
            cbor_fast::write_record(&record, &mut out);
            prop_assert_eq!(&out, &ciborium_bytes(&record), "record");
            out.clear();
            cbor_fast::write_entry(&entry, &mut out);
            prop_assert_eq!(&out, &ciborium_bytes(&entry), "entry");
            // The codec's entry points use it.
            prop_assert_eq!(Codec::Cbor.encode_frame(&frame), ciborium_frame(&frame));
            prop_assert_eq!(Codec::Cbor.encode_message(&Message::Entry(entry.clone())), ciborium_bytes(&entry));
            prop_assert_eq!(Codec::Cbor.encode_message(&Message::Record(record.clone())), ciborium_bytes(&record));
        }

        #[test]
        fn reads_everything_ciborium_writes(frame in frame(), record in record(), entry in entry()) {
            prop_assert_eq!(cbor_fast::parse_frame(&ciborium_frame(&frame)).map(|v| v.into_frame()), Some(frame));
            prop_assert_eq!(cbor_fast::parse_record(&ciborium_bytes(&record).into()), Some(record));
            prop_assert_eq!(cbor_fast::parse_entry(&ciborium_bytes(&entry).into()), Some(entry));
        }

        /// Other valid encodings of the same data. Another key order and long heads take the fast path
        /// and decode to the same value; indefinite lengths are left to ciborium (which cannot read a
        /// chunked byte string as a UUID, so those frames fail, exactly as they did before).
        #[test]
        fn other_encodings_decode_like_ciborium(
            frame in frame(),
            record in record(),
            entry in entry(),
            style in style(),
        ) {
            let fast = !matches!(style, Style::Indefinite);
            let bytes = restyled(&ciborium_frame(&frame), style);
            agree(&bytes)?;
            prop_assert_eq!(cbor_fast::parse_frame(&bytes).is_some(), fast);
            if fast {
                prop_assert_eq!(Frame::from_cbor(&bytes, &UNLIMITED), Ok(frame));
            }
            let bytes = restyled(&ciborium_bytes(&record), style);
            agree(&bytes)?;
            prop_assert_eq!(cbor_fast::parse_record(&bytes::Bytes::copy_from_slice(&bytes)).is_some(), fast);
            if fast {
                prop_assert_eq!(Codec::Cbor.decode_message(MessageKind::Record, &bytes), Ok(Message::Record(record)));
            }
            let bytes = restyled(&ciborium_bytes(&entry), style);
            agree(&bytes)?;
            prop_assert_eq!(cbor_fast::parse_entry(&bytes::Bytes::copy_from_slice(&bytes)).is_some(), fast);
            if fast {
                prop_assert_eq!(Codec::Cbor.decode_message(MessageKind::Entry, &bytes), Ok(Message::Entry(entry)));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn agrees_with_ciborium_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..128)) {
            agree(&bytes)?;
        }

        #[test]
        fn agrees_with_ciborium_on_mutated_encodings(
            frame in frame(),
            record in record(),
            entry in entry(),
            edits in edits(),
        ) {
            agree(&mutated(ciborium_frame(&frame), edits.clone()))?;
            agree(&mutated(ciborium_bytes(&record), edits.clone()))?;
            agree(&mutated(ciborium_bytes(&entry), edits))?;
        }
    }

    #[test]
    fn frame_payload_limit_is_checked_before_copying() {
        let frame = Frame::data(Uuid::nil(), Uuid::nil(), vec![1; 64]);
        let bytes = Codec::Cbor.encode_frame(&frame);
        let limits = Limits { max_frame: 1024, max_payload: 63 };
        assert!(cbor_fast::parse_frame(&bytes).is_some(), "the usual encoding takes the fast path");
        assert_eq!(Frame::from_cbor(&bytes, &limits), Err(WireError::PayloadTooLarge { len: 64, limit: 63 }));
    }
}
