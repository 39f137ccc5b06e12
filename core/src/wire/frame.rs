//! The physical frame (Go `MuxerMsg`, PROTOCOL.md §2.4) and its JSON and CBOR encodings.
//!
//! JSON (text WebSocket frames, what Go speaks), keys in Go's order, payload as padded base64:
//!
//! ```text
//! {"ControlType":"data","store_id":"<uuid>","channel_id":"<uuid>","payload":"<base64>"[,"trace_context":{...}]}
//! ```
//!
//! CBOR (binary WebSocket frames, subprotocol `streamkit.v1.cbor`): a definite-length array
//!
//! ```text
//! [ control: text ("data" | "ping" | "pong" | "close" | "error"),
//!   store_id: bytes(16), channel_id: bytes(16),
//!   payload: bytes | null,
//!   trace_context: map(text => text)        ; only present when non-empty ]
//! ```
//!
//! Sizes are checked before anything is allocated: the whole frame against [`Limits::max_frame`], the
//! decoded payload against [`Limits::max_payload`] (for JSON from the base64 length, before decoding).

use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::Deserialize;
use uuid::Uuid;

use super::serde_helpers::decode_base64;
use super::{Limits, WireError, gojson};

/// W3C trace propagation headers carried by a frame (`traceparent`, `tracestate`, `baggage`).
pub type TraceContext = BTreeMap<String, String>;

/// Kind of frame (`ControlType` on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ControlType {
    /// A message of a logical stream.
    Data,
    /// Heartbeat request; answered with [`ControlType::Pong`].
    Ping,
    /// Heartbeat answer.
    Pong,
    /// Connection-wide shutdown.
    Close,
    /// Per-channel rejection (`mux::error` payload).
    Error,
    /// A value this implementation does not know; receivers ignore such frames.
    Unknown(String),
}

impl ControlType {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            ControlType::Data => "data",
            ControlType::Ping => "ping",
            ControlType::Pong => "pong",
            ControlType::Close => "close",
            ControlType::Error => "error",
            ControlType::Unknown(s) => s,
        }
    }

    /// Parses a wire name; unknown names are kept.
    pub fn parse(s: &str) -> Self {
        match s {
            "data" => ControlType::Data,
            "ping" => ControlType::Ping,
            "pong" => ControlType::Pong,
            "close" => ControlType::Close,
            "error" => ControlType::Error,
            other => ControlType::Unknown(other.into()),
        }
    }
}

/// One muxer frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub control: ControlType,
    /// Store the logical stream belongs to (nil for ping/pong/close).
    pub store_id: Uuid,
    /// Logical stream id (nil for ping/pong/close).
    pub channel_id: Uuid,
    /// Inner message bytes; `None` is `null` on the wire (ping/pong/close).
    pub payload: Option<Vec<u8>>,
    /// Optional trace propagation headers (omitted when empty).
    pub trace_context: TraceContext,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("control", &self.control)
            .field("store_id", &self.store_id)
            .field("channel_id", &self.channel_id)
            .field("payload_len", &self.payload.as_ref().map(Vec::len))
            .field("trace_context", &self.trace_context)
            .finish()
    }
}

impl Frame {
    /// A control frame without ids or payload (ping, pong, close).
    pub fn control(control: ControlType) -> Self {
        Self {
            control,
            store_id: Uuid::nil(),
            channel_id: Uuid::nil(),
            payload: None,
            trace_context: TraceContext::new(),
        }
    }

    /// A data frame for a logical stream.
    pub fn data(store_id: Uuid, channel_id: Uuid, payload: Vec<u8>) -> Self {
        Self {
            control: ControlType::Data,
            store_id,
            channel_id,
            payload: Some(payload),
            trace_context: TraceContext::new(),
        }
    }

    /// An `error` control frame for a logical stream; `payload` is an encoded `mux::error` object.
    pub fn error(store_id: Uuid, channel_id: Uuid, payload: Vec<u8>) -> Self {
        Self { control: ControlType::Error, ..Self::data(store_id, channel_id, payload) }
    }

    /// Appends the Go-compatible JSON text of the frame to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ControlType\":");
        gojson::write_str(out, self.control.as_str());
        out.extend_from_slice(b",\"store_id\":");
        write_uuid(out, &self.store_id);
        out.extend_from_slice(b",\"channel_id\":");
        write_uuid(out, &self.channel_id);
        out.extend_from_slice(b",\"payload\":");
        match &self.payload {
            None => out.extend_from_slice(b"null"),
            Some(p) => gojson::write_base64(out, p),
        }
        if !self.trace_context.is_empty() {
            out.extend_from_slice(b",\"trace_context\":{");
            for (i, (k, v)) in self.trace_context.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                gojson::write_str(out, k);
                out.push(b':');
                gojson::write_str(out, v);
            }
            out.push(b'}');
        }
        out.push(b'}');
    }

    /// Decodes a JSON frame (any key order, unknown keys ignored), enforcing `limits`.
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<Self, WireError> {
        limits.check_frame(bytes.len())?;
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw<'a> {
            #[serde(rename = "ControlType", alias = "controltype", alias = "controlType", borrow)]
            control: Option<Cow<'a, str>>,
            store_id: Option<Uuid>,
            channel_id: Option<Uuid>,
            #[serde(borrow)]
            payload: Option<Cow<'a, str>>,
            #[serde(deserialize_with = "super::serde_helpers::bounded_map")]
            trace_context: TraceContext,
        }
        let raw: Raw<'_> =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(alloc::format!("{e}")))?;
        let payload = match raw.payload {
            None => None,
            Some(b64) => {
                limits.check_payload(padded_base64_decoded_len(b64.as_bytes()))?;
                Some(
                    decode_base64::<serde_json::Error>(&b64)
                        .map_err(|e| WireError::Malformed(alloc::format!("{e}")))?,
                )
            }
        };
        Ok(Self {
            control: ControlType::parse(raw.control.as_deref().unwrap_or("")),
            store_id: raw.store_id.unwrap_or_default(),
            channel_id: raw.channel_id.unwrap_or_default(),
            payload,
            trace_context: raw.trace_context,
        })
    }

    /// Appends the CBOR encoding of the frame (see the module docs) to `out`: ciborium's bytes, written
    /// by [`cbor_fast`](super::cbor_fast).
    pub fn write_cbor(&self, out: &mut Vec<u8>) {
        super::cbor_fast::write_frame(self, out)
    }

    /// Decodes a CBOR frame, enforcing `limits`.
    ///
    /// The usual encoding is read by [`cbor_fast`](super::cbor_fast), which borrows the payload, so its
    /// size is checked before it is copied; any other valid CBOR form is decoded by ciborium.
    pub fn from_cbor(bytes: &[u8], limits: &Limits) -> Result<Self, WireError> {
        limits.check_frame(bytes.len())?;
        if let Some(view) = super::cbor_fast::parse_frame(bytes) {
            if let Some(p) = view.payload {
                limits.check_payload(p.len())?;
            }
            return Ok(view.into_frame());
        }
        let frame = super::cbor::read_frame(bytes)?;
        if let Some(p) = &frame.payload {
            limits.check_payload(p.len())?;
        }
        Ok(frame)
    }
}

/// Upper bound of the number of bytes a padded base64 string of `len` characters decodes to: exact
/// when the text has no `=` padding, up to 2 bytes more than the real size when it has.
pub fn base64_decoded_len(len: usize) -> usize {
    len / 4 * 3
}

/// Number of bytes the padded base64 text `b64` decodes to, computed without decoding: exact for
/// well-formed input (its `=` padding is subtracted), never more than [`base64_decoded_len`] for any input
/// (malformed text fails decoding anyway). Limits are checked against this, so a payload of exactly
/// [`Limits::max_payload`] bytes is accepted whatever its length modulo 3.
pub fn padded_base64_decoded_len(b64: &[u8]) -> usize {
    let padding = b64.iter().rev().take(2).take_while(|&&b| b == b'=').count();
    base64_decoded_len(b64.len()).saturating_sub(padding)
}

fn write_uuid(out: &mut Vec<u8>, id: &Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_len_subtracts_padding() {
        assert_eq!(padded_base64_decoded_len(b""), 0);
        assert_eq!(padded_base64_decoded_len(b"aGk="), 2);
        assert_eq!(padded_base64_decoded_len(b"aA=="), 1);
        assert_eq!(padded_base64_decoded_len(b"aGVs"), 3);
        assert_eq!(padded_base64_decoded_len(b"===="), 1);
        assert_eq!(padded_base64_decoded_len(b"=="), 0);
    }

    #[test]
    fn a_payload_of_exactly_the_limit_is_accepted_by_both_codecs() {
        for len in 9..=11 {
            let limits = Limits { max_frame: 1000, max_payload: 10 };
            let frame = Frame::data(Uuid::nil(), Uuid::nil(), alloc::vec![7u8; len]);
            let mut json = Vec::new();
            frame.write_json(&mut json);
            let mut cbor = Vec::new();
            frame.write_cbor(&mut cbor);
            if len <= 10 {
                assert_eq!(Frame::from_json(&json, &limits).unwrap(), frame, "json, {len} bytes");
                assert_eq!(Frame::from_cbor(&cbor, &limits).unwrap(), frame, "cbor, {len} bytes");
            } else {
                let too_large = WireError::PayloadTooLarge { len, limit: 10 };
                assert_eq!(Frame::from_json(&json, &limits).unwrap_err(), too_large);
                assert_eq!(Frame::from_cbor(&cbor, &limits).unwrap_err(), too_large);
            }
        }
    }
}
