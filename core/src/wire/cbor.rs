//! CBOR encoding with ciborium: the frame layout of [`super::frame`] and helpers for inner messages.
//!
//! Inner messages use the same serde impls as JSON; ciborium is not human-readable, so byte fields become
//! CBOR byte strings, UUIDs 16-byte byte strings and lex keys raw byte strings. Structs are maps keyed by the
//! same field names as the JSON form.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};
use uuid::Uuid;

use super::WireError;
use super::frame::{ControlType, Frame, TraceContext};
use super::serde_helpers::opt_bytes;

/// Serializes a byte slice as a CBOR byte string.
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct FrameRef<'a>(&'a Frame);

impl Serialize for FrameRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let with_trace = !f.trace_context.is_empty();
        let mut t = s.serialize_tuple(if with_trace { 5 } else { 4 })?;
        t.serialize_element(f.control.as_str())?;
        t.serialize_element(&BytesRef(f.store_id.as_bytes()))?;
        t.serialize_element(&BytesRef(f.channel_id.as_bytes()))?;
        t.serialize_element(&f.payload.as_deref().map(BytesRef))?;
        if with_trace {
            t.serialize_element(&f.trace_context)?;
        }
        t.end()
    }
}

/// Appends the CBOR form of `frame` to `out`.
pub fn write_frame(frame: &Frame, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail and every field has a CBOR form.
    let _ = ciborium::into_writer(&FrameRef(frame), out);
}

struct OptPayload(Option<bytes::Bytes>);

impl<'de> Deserialize<'de> for OptPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        opt_bytes::deserialize(d).map(OptPayload)
    }
}

/// A trace context decoded with the entry bound of every client map ([`super::serde_helpers::bounded_map`]).
struct BoundedTraceContext(TraceContext);

impl<'de> Deserialize<'de> for BoundedTraceContext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::serde_helpers::bounded_map(d).map(BoundedTraceContext)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = Frame;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a streamkit CBOR frame array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Frame, A::Error> {
        let control: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let store_id: Uuid = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let channel_id: Uuid = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(2, &self))?;
        let payload: OptPayload = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(3, &self))?;
        let trace_context: Option<BoundedTraceContext> = seq.next_element()?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(6, &self));
        }
        Ok(Frame {
            control: ControlType::parse(&control),
            store_id,
            channel_id,
            payload: payload.0.map(Vec::from),
            trace_context: trace_context.map(|t| t.0).unwrap_or_default(),
        })
    }
}

/// Decodes the CBOR form of a frame (no size checks: callers check limits).
pub fn read_frame(bytes: &[u8]) -> Result<Frame, WireError> {
    struct Wrapper(Frame);
    impl<'de> Deserialize<'de> for Wrapper {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_seq(FrameVisitor).map(Wrapper)
        }
    }
    let mut reader = bytes;
    let Wrapper(frame) = ciborium::from_reader(&mut reader).map_err(malformed)?;
    if !reader.is_empty() {
        return Err(WireError::Malformed("trailing bytes after CBOR frame".into()));
    }
    Ok(frame)
}

/// Serializes any message to CBOR, appending to `out`.
pub fn to_writer<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail; our types contain no unsupported shapes.
    let _ = ciborium::into_writer(value, out);
}

/// Deserializes one CBOR value that must span all of `bytes`.
pub fn from_slice<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, WireError> {
    let mut reader = bytes;
    let value = ciborium::from_reader(&mut reader).map_err(malformed)?;
    if !reader.is_empty() {
        return Err(WireError::Malformed("trailing bytes after CBOR value".into()));
    }
    Ok(value)
}

/// A decode failure as a text fit for a peer: ciborium's errors print as debug dumps
/// (`Semantic(None, "…")`, `RecursionLimitExceeded`), which say nothing to a client.
fn malformed<E>(error: ciborium::de::Error<E>) -> WireError {
    use ciborium::de::Error;
    WireError::Malformed(match error {
        Error::Io(_) => String::from("truncated CBOR"),
        Error::Syntax(offset) => alloc::format!("invalid CBOR at byte {offset}"),
        Error::Semantic(_, message) => message,
        Error::RecursionLimitExceeded => String::from("CBOR nested too deeply"),
    })
}
