//! Wire formats: the frame, the inner messages and their two codecs.
//!
//! Every WebSocket message is one **frame** (Go `MuxerMsg`, PROTOCOL.md §2.4); a `data` frame carries one inner
//! message of a logical stream in its `payload`. The codec is chosen per connection.
//!
//! # JSON ([`Codec::Json`]): what Go speaks
//!
//! WebSocket **text** frames, byte-compatible with Go's `encoding/json` (PROTOCOL.md §1, §2.4; written by
//! [`gojson`]):
//!
//! ```text
//! {"ControlType":"data","store_id":"<uuid>","channel_id":"<uuid>","payload":"<base64>"[,"trace_context":{...}]}
//! ```
//!
//! The frame's `payload` is the padded standard base64 of the inner message's JSON (`null` when there is
//! none). Keys come in Go's order, strings use Go's HTML-safe escaping, `[]byte` fields are base64
//! (`null` for nil, `""` for empty), UUIDs are always written (nil included), lexkeys are lowercase hex,
//! and `omitempty` fields are left out exactly when Go leaves them out. The decoder accepts any key order
//! and ignores unknown keys.
//!
//! # CBOR ([`Codec::Cbor`]): the compact binary mode
//!
//! WebSocket **binary** frames, negotiated with the subprotocol [`CBOR_SUBPROTOCOL`]
//! (`streamkit.v1.cbor`). A frame is a definite-length CBOR array:
//!
//! ```text
//! [ control:    text,          ; "data" | "ping" | "pong" | "close" | "error"
//!   store_id:   bytes(16),     ; raw UUID bytes; nil UUID for ping/pong/close
//!   channel_id: bytes(16),
//!   payload:    bytes | null,  ; the inner message's CBOR, not base64
//!   trace_context: { * text => text }   ; fifth element, only when non-empty ]
//! ```
//!
//! Inner messages are CBOR maps keyed by the JSON field names, with the same `omitempty` rules; byte
//! fields are byte strings (`null` for nil), UUIDs 16-byte byte strings, lexkeys raw byte strings,
//! envelopes `{"$type": text, "content": map}`, names bare text strings and stream control
//! `{"type": "mux::close", "err"?: text}`. Encodings are ciborium's (shortest integer heads, definite
//! lengths); frames, records and entries are written and read by the hand-written [`cbor_fast`], which
//! produces the same bytes and leaves any other valid encoding to ciborium.
//!
//! # Both codecs
//!
//! Inner messages are not self-describing on the wire (a bare `Record` and a bare `SegmentStatus` are
//! both plain objects), so a receiver decodes them with the [`MessageKind`] its operation expects.
//! Stream ends travel as [`StreamControl`] objects inside data frames. Frame and payload sizes are
//! checked against [`Limits`] before decoding allocates; decoders return errors, never panic.

pub mod cbor;
pub mod cbor_fast;
pub mod control;
pub mod frame;
#[cfg(any(fuzzing, test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gojson;
pub mod serde_helpers;

use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use serde::Serialize;

use crate::api::{Entry, Envelope, EnvelopeError, LeaseResult, Record, SegmentStatus};
pub use control::StreamControl;
pub use frame::{ControlType, Frame, TraceContext};

/// WebSocket subprotocol that selects the CBOR codec; without it a connection speaks JSON.
pub const CBOR_SUBPROTOCOL: &str = "streamkit.v1.cbor";

/// Default maximum size of one frame (Go `MaxPayloadBytes`, 8 MiB).
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
/// Default maximum size of one decoded inner message (6 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 6 << 20;

/// Size limits applied before decoding allocates (PROTOCOL.md §2.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum bytes of one physical frame.
    pub max_frame: usize,
    /// Maximum bytes of one inner message (the frame's decoded payload).
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_frame: DEFAULT_MAX_FRAME, max_payload: DEFAULT_MAX_PAYLOAD }
    }
}

impl Limits {
    /// Fails when a frame of `len` bytes is over the limit.
    pub fn check_frame(&self, len: usize) -> Result<(), WireError> {
        if len > self.max_frame {
            return Err(WireError::FrameTooLarge { len, limit: self.max_frame });
        }
        Ok(())
    }

    /// Fails when an inner message of `len` bytes is over the limit.
    pub fn check_payload(&self, len: usize) -> Result<(), WireError> {
        if len > self.max_payload {
            return Err(WireError::PayloadTooLarge { len, limit: self.max_payload });
        }
        Ok(())
    }
}

/// Errors of the wire layer. Texts that peers match on are Go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame over [`Limits::max_frame`]; the connection is closed.
    #[error("frame payload size exceeds limit ({len} > {limit} bytes)")]
    FrameTooLarge {
        /// Size of the frame.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An inner message over [`Limits::max_payload`].
    #[error("muxer payload too large ({len} > {limit} bytes)")]
    PayloadTooLarge {
        /// Size of the message.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Bytes that are not a frame or not the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// An envelope that cannot be decoded (Go's texts).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// The codec of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Go-compatible JSON, text frames.
    Json,
    /// CBOR, binary frames.
    Cbor,
}

impl Codec {
    /// Whether frames of this codec travel as WebSocket binary frames.
    pub fn is_binary(self) -> bool {
        matches!(self, Codec::Cbor)
    }

    /// Appends the encoding of `frame`.
    pub fn write_frame(self, frame: &Frame, out: &mut Vec<u8>) {
        match self {
            Codec::Json => frame.write_json(out),
            Codec::Cbor => frame.write_cbor(out),
        }
    }

    /// The encoding of `frame`.
    pub fn encode_frame(self, frame: &Frame) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + frame.payload.as_ref().map_or(0, |p| p.len() * 4 / 3));
        self.write_frame(frame, &mut out);
        out
    }

    /// Decodes one frame, enforcing `limits` before allocating.
    pub fn decode_frame(self, bytes: &[u8], limits: &Limits) -> Result<Frame, WireError> {
        match self {
            Codec::Json => Frame::from_json(bytes, limits),
            Codec::Cbor => Frame::from_cbor(bytes, limits),
        }
    }

    /// Encodes any serializable value (a message body) with this codec.
    pub fn encode_value<T: Serialize + ?Sized>(self, value: &T) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_value(value, &mut out);
        out
    }

    /// Appends the encoding of any serializable value.
    pub fn write_value<T: Serialize + ?Sized>(self, value: &T, out: &mut Vec<u8>) {
        match self {
            // Our message types only contain shapes the Go JSON writer supports.
            Codec::Json => {
                let _ = gojson::to_writer(out, value);
            }
            Codec::Cbor => cbor::to_writer(value, out),
        }
    }

    /// Decodes a value of a known type with this codec.
    pub fn decode_value<T: for<'de> serde::Deserialize<'de>>(self, bytes: &[u8]) -> Result<T, WireError> {
        match self {
            Codec::Json => {
                serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(alloc::format!("{e}")))
            }
            Codec::Cbor => cbor::from_slice(bytes),
        }
    }

    /// Encodes an inner message.
    ///
    /// CBOR records and entries are written by [`cbor_fast`] (the same bytes as [`Codec::encode_value`]).
    pub fn encode_message(self, message: &Message) -> Vec<u8> {
        match (self, message) {
            (Codec::Cbor, Message::Record(m)) => {
                let mut out = Vec::with_capacity(48 + m.payload.as_ref().map_or(0, |p| p.len()));
                cbor_fast::write_record(m, &mut out);
                return out;
            }
            (Codec::Cbor, Message::Entry(m)) => {
                let mut out = Vec::with_capacity(160 + m.payload.as_ref().map_or(0, |p| p.len()));
                cbor_fast::write_entry(m, &mut out);
                return out;
            }
            _ => {}
        }
        match message {
            Message::Envelope(m) => self.encode_value(m),
            Message::Record(m) => self.encode_value(m),
            Message::Entry(m) => self.encode_value(m),
            Message::Status(m) => self.encode_value(m),
            Message::LeaseResult(m) => self.encode_value(m),
            Message::Name(m) => self.encode_value(m),
        }
    }

    /// Decodes an inner message of the expected `kind`.
    ///
    /// CBOR records and entries in their usual encoding are read by [`cbor_fast`]; anything else goes
    /// through [`Codec::decode_value`], so both accept the same inputs and yield the same values.
    pub fn decode_message(self, kind: MessageKind, bytes: &[u8]) -> Result<Message, WireError> {
        if self == Codec::Cbor && matches!(kind, MessageKind::Record | MessageKind::Entry) {
            return self.decode_message_bytes(kind, Bytes::copy_from_slice(bytes));
        }
        self.decode_with_serde(kind, bytes)
    }

    /// [`decode_message`](Self::decode_message) of a message the caller owns: a CBOR record's or
    /// entry's payload is then a slice of it rather than a copy.
    pub fn decode_message_bytes(self, kind: MessageKind, message: Bytes) -> Result<Message, WireError> {
        if self == Codec::Cbor {
            match kind {
                MessageKind::Record => {
                    if let Some(record) = cbor_fast::parse_record(&message) {
                        return Ok(Message::Record(record));
                    }
                }
                MessageKind::Entry => {
                    if let Some(entry) = cbor_fast::parse_entry(&message) {
                        return Ok(Message::Entry(entry));
                    }
                }
                _ => {}
            }
        }
        self.decode_with_serde(kind, &message)
    }

    fn decode_with_serde(self, kind: MessageKind, bytes: &[u8]) -> Result<Message, WireError> {
        Ok(match kind {
            MessageKind::Envelope => Message::Envelope(match self {
                Codec::Json => Envelope::from_json(bytes)?,
                Codec::Cbor => Envelope::from_cbor(bytes)?,
            }),
            MessageKind::Record => Message::Record(self.decode_value(bytes)?),
            MessageKind::Entry => Message::Entry(self.decode_value(bytes)?),
            MessageKind::Status => Message::Status(self.decode_value(bytes)?),
            MessageKind::LeaseResult => Message::LeaseResult(self.decode_value(bytes)?),
            MessageKind::Name => Message::Name(self.decode_value(bytes)?),
        })
    }
}

/// An inner message of a logical stream, as a typed value (PROTOCOL.md §1.4).
///
/// In-process transports pass these directly; socket transports encode them with a [`Codec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// An envelope: requests, and worker-presence traffic in both directions.
    Envelope(Envelope),
    /// A bare record (Produce, client → server).
    Record(Record),
    /// A bare entry (Peek and Consume*, server → client).
    Entry(Entry),
    /// A bare segment status (Produce answers, subscriptions).
    Status(SegmentStatus),
    /// A bare lease result.
    LeaseResult(LeaseResult),
    /// A bare name (GetSpaces, GetSegments): a JSON string.
    Name(String),
}

/// Fixed part of [`Message::footprint`]: the value itself, its allocations and its frame.
const MESSAGE_OVERHEAD: usize = 64;
/// Per metadata entry (or worker) in [`Message::footprint`]: two strings (headers and allocations) and
/// their share of a map node, as a map of short keys and values takes them on the heap.
const ENTRY_OVERHEAD: usize = 96;

fn metadata_footprint(metadata: &crate::api::Metadata) -> usize {
    metadata.iter().map(|(k, v)| ENTRY_OVERHEAD + k.len() + v.len()).sum()
}

/// [`Message::footprint`] of `Message::Record(record)`, for holders of bare records.
pub fn record_footprint(record: &Record) -> usize {
    MESSAGE_OVERHEAD + record.payload.as_ref().map_or(0, |p| p.len()) + metadata_footprint(&record.metadata)
}

impl Message {
    /// About how many bytes this message holds in memory, and within a small factor on the wire: the
    /// unit of byte credit and memory budgets. Deterministic (it depends on the value only), so the
    /// side that charges a message and the side that refunds it agree exactly.
    pub fn footprint(&self) -> usize {
        let bytes = |b: &Option<Bytes>| b.as_ref().map_or(0, |p| p.len());
        MESSAGE_OVERHEAD
            + match self {
                Message::Record(r) => return record_footprint(r),
                Message::Entry(e) => {
                    bytes(&e.payload) + metadata_footprint(&e.metadata) + e.space.len() + e.segment.len()
                }
                Message::Status(s) => s.space.len() + s.segment.len(),
                Message::LeaseResult(r) => r.message.len(),
                Message::Name(name) => name.len(),
                Message::Envelope(envelope) => return envelope_footprint(envelope),
            }
    }

    /// The kind of this message.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Envelope(_) => MessageKind::Envelope,
            Message::Record(_) => MessageKind::Record,
            Message::Entry(_) => MessageKind::Entry,
            Message::Status(_) => MessageKind::Status,
            Message::LeaseResult(_) => MessageKind::LeaseResult,
            Message::Name(_) => MessageKind::Name,
        }
    }
}

/// [`Message::footprint`] of `Message::Envelope(envelope)`, for holders of bare envelopes.
pub fn envelope_footprint(envelope: &Envelope) -> usize {
    MESSAGE_OVERHEAD
        + match envelope {
            Envelope::WorkerInventory(inventory) => {
                inventory.workers.iter().map(|w| ENTRY_OVERHEAD + metadata_footprint(&w.metadata)).sum()
            }
            Envelope::SubscribeWorkers(r) => metadata_footprint(&r.metadata),
            Envelope::Consume(r) => {
                r.offsets.iter().map(|(space, offset)| ENTRY_OVERHEAD + space.len() + offset.0.len()).sum()
            }
            Envelope::Produce(r) => r.space.len() + r.segment.len(),
            Envelope::Peek(r) => r.space.len() + r.segment.len(),
            Envelope::ConsumeSegment(r) => r.space.len() + r.segment.len(),
            Envelope::ConsumeSpace(r) => r.space.len() + r.offset.0.len(),
            Envelope::GetSegments(r) => r.space.len(),
            Envelope::SubscribeToSegmentStatus(r) => r.space.len() + r.segment.len(),
            Envelope::SegmentStatus(s) => s.space.len() + s.segment.len(),
            Envelope::SegmentNotification(n) => n.segment_status.space.len() + n.segment_status.segment.len(),
            Envelope::LeaseAcquire(r) => r.key.len() + r.holder.len(),
            Envelope::LeaseRenew(r) => r.key.len() + r.holder.len(),
            Envelope::LeaseRelease(r) => r.key.len() + r.holder.len(),
            Envelope::LeaseResult(r) => r.message.len(),
            Envelope::GetSpaces(_)
            | Envelope::GetStatus(_)
            | Envelope::Presence(_)
            | Envelope::WorkerInventoryNotification(_) => 0,
        }
}

/// What a receiver expects the next inner message to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// [`Message::Envelope`].
    Envelope,
    /// [`Message::Record`].
    Record,
    /// [`Message::Entry`].
    Entry,
    /// [`Message::Status`].
    Status,
    /// [`Message::LeaseResult`].
    LeaseResult,
    /// [`Message::Name`].
    Name,
}

impl MessageKind {
    /// Every kind, for code that must try each decoder (fuzzing, property tests).
    pub const ALL: [MessageKind; 6] = [
        MessageKind::Envelope,
        MessageKind::Record,
        MessageKind::Entry,
        MessageKind::Status,
        MessageKind::LeaseResult,
        MessageKind::Name,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CBOR record's or entry's payload is a slice of the message it was decoded from, not a copy.
    #[test]
    fn cbor_payloads_are_slices_of_their_message() {
        let record = Message::Record(Record::new(1, alloc::vec![7u8; 100]));
        let entry = Message::Entry(Entry { payload: Some(Bytes::from_static(&[9; 64])), ..Entry::default() });
        for (kind, message) in [(MessageKind::Record, record), (MessageKind::Entry, entry)] {
            let encoded = Bytes::from(Codec::Cbor.encode_message(&message));
            let decoded = Codec::Cbor.decode_message_bytes(kind, encoded.clone()).unwrap();
            assert_eq!(decoded, message);
            let payload = match decoded {
                Message::Record(r) => r.payload.unwrap(),
                Message::Entry(e) => e.payload.unwrap(),
                other => panic!("{other:?}"),
            };
            assert!(encoded.as_ptr_range().contains(&payload.as_ptr()), "{kind:?}: copied");
        }
    }
}
