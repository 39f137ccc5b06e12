//! The polymorphic envelope of PROTOCOL.md §1.1: `{"$type":"streamkit://api/v1/<name>","content":{...}}`.
//!
//! Requests always travel in an envelope (the first message of a stream); worker-presence traffic uses
//! envelopes in both directions. Decoding follows fgrzl/json's rules and error texts.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};

use super::data::*;
use super::requests::*;

/// Common prefix of every discriminator.
pub const TYPE_PREFIX: &str = "streamkit://api/v1/";

/// Errors decoding an envelope, with fgrzl/json's texts where Go has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// No `$type` key.
    #[error("missing $type field in envelope")]
    MissingType,
    /// `$type` is the empty string.
    #[error("empty $type discriminator")]
    EmptyType,
    /// `$type` names no registered type.
    #[error("type \"{0}\" is not registered")]
    NotRegistered(String),
    /// `content` is absent or `null`.
    #[error("missing content for type: \"{0}\"")]
    MissingContent(String),
    /// The envelope or its content is malformed.
    #[error("{0}")]
    Malformed(String),
}

macro_rules! envelope_types {
    ($( $variant:ident ( $ty:ty ) = $suffix:literal, )*) => {
        /// Any message that can travel in an envelope, tagged by its Go discriminator.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Envelope {
            $( $variant($ty), )*
        }

        impl Envelope {
            /// The discriminator suffix (after `streamkit://api/v1/`), e.g. `"produce"`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Envelope::$variant(_) => $suffix, )*
                }
            }

            /// The Go type name, used in `invalid request msg type: *api.<Type>` errors.
            pub fn go_type_name(&self) -> &'static str {
                match self {
                    $( Envelope::$variant(_) => stringify!($variant), )*
                }
            }

            /// Whether `suffix` is a registered discriminator suffix.
            pub fn is_registered(suffix: &str) -> bool {
                matches!(suffix, $( $suffix )|*)
            }

            /// Decodes `content` for the registered type `suffix` with `decode`, a function that
            /// deserializes one value of any type from the content.
            fn decode_content<F: ContentDecoder>(suffix: &str, content: F) -> Result<Self, EnvelopeError> {
                match suffix {
                    $( $suffix => content.decode::<$ty>().map(Envelope::$variant), )*
                    _ => Err(EnvelopeError::NotRegistered(format!("{TYPE_PREFIX}{suffix}"))),
                }
            }
        }

        impl Serialize for Envelope {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut s = serializer.serialize_struct("Envelope", 2)?;
                s.serialize_field("$type", &Discriminator(self.type_name()))?;
                match self {
                    $( Envelope::$variant(v) => s.serialize_field("content", v)?, )*
                }
                s.end()
            }
        }
    };
}

envelope_types! {
    ConsumeSegment(ConsumeSegment) = "consume_segment",
    ConsumeSpace(ConsumeSpace) = "consume_space",
    Consume(Consume) = "consume",
    GetSegments(GetSegments) = "get_segments",
    GetSpaces(GetSpaces) = "get_spaces",
    GetStatus(GetStatus) = "get_status",
    Peek(Peek) = "peek",
    Produce(Produce) = "produce",
    SegmentNotification(SegmentNotification) = "segment_notification",
    SegmentStatus(SegmentStatus) = "segment_status",
    SubscribeToSegmentStatus(SubscribeToSegmentStatus) = "subscribe_to_segment_status",
    LeaseAcquire(LeaseAcquire) = "lease_acquire",
    LeaseRenew(LeaseRenew) = "lease_renew",
    LeaseRelease(LeaseRelease) = "lease_release",
    LeaseResult(LeaseResult) = "lease_result",
    SubscribeWorkers(SubscribeWorkers) = "subscribe_workers",
    // Shared: one inventory goes to every observer of a store.
    WorkerInventory(Arc<WorkerInventory>) = "worker_inventory",
    Presence(Presence) = "presence",
    WorkerInventoryNotification(WorkerInventoryNotification) = "worker_inventory_notification",
}

/// Serializes `streamkit://api/v1/<suffix>` without allocating.
struct Discriminator(&'static str);

impl Serialize for Discriminator {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{TYPE_PREFIX}{}", self.0))
    }
}

/// Something that can deserialize the envelope content as any registered type.
trait ContentDecoder {
    fn decode<T: for<'de> Deserialize<'de>>(self) -> Result<T, EnvelopeError>;
}

struct JsonContent<'a>(&'a serde_json::value::RawValue);

impl ContentDecoder for JsonContent<'_> {
    fn decode<T: for<'de> Deserialize<'de>>(self) -> Result<T, EnvelopeError> {
        serde_json::from_str(self.0.get())
            .map_err(|e| EnvelopeError::Malformed(format!("invalid envelope content: {e}")))
    }
}

/// Largest CBOR envelope decoded through a generic value (see [`Envelope::from_cbor`]).
const MAX_GENERIC_CBOR_ENVELOPE: usize = 4096;

/// The encoded content of a CBOR envelope, decoded straight into its type.
struct CborBytes<'a>(&'a [u8]);

impl ContentDecoder for CborBytes<'_> {
    fn decode<T: for<'de> Deserialize<'de>>(self) -> Result<T, EnvelopeError> {
        crate::wire::cbor::from_slice(self.0).map_err(|e| match e {
            crate::wire::WireError::Malformed(text) => {
                EnvelopeError::Malformed(format!("invalid envelope content: {text}"))
            }
            other => EnvelopeError::Malformed(format!("invalid envelope content: {other}")),
        })
    }
}

struct CborContent(ciborium::Value);

impl ContentDecoder for CborContent {
    fn decode<T: for<'de> Deserialize<'de>>(self) -> Result<T, EnvelopeError> {
        self.0.deserialized().map_err(|e| EnvelopeError::Malformed(format!("invalid envelope content: {e}")))
    }
}

fn check_type(ty: Option<&str>) -> Result<&str, EnvelopeError> {
    let ty = ty.ok_or(EnvelopeError::MissingType)?;
    if ty.is_empty() {
        return Err(EnvelopeError::EmptyType);
    }
    match ty.strip_prefix(TYPE_PREFIX) {
        Some(suffix) if Envelope::is_registered(suffix) => Ok(suffix),
        _ => Err(EnvelopeError::NotRegistered(ty.into())),
    }
}

impl Envelope {
    /// Decodes an envelope from JSON (any key order, unknown keys ignored).
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(rename = "$type", default)]
            ty: Option<alloc::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            content: Option<&'a serde_json::value::RawValue>,
        }
        let raw: Raw<'_> = serde_json::from_slice(bytes)
            .map_err(|e| EnvelopeError::Malformed(format!("invalid envelope: {e}")))?;
        let suffix = check_type(raw.ty.as_deref())?;
        let content = raw
            .content
            .filter(|c| c.get() != "null")
            .ok_or_else(|| EnvelopeError::MissingContent(format!("{TYPE_PREFIX}{suffix}")))?;
        Self::decode_content(suffix, JsonContent(content))
    }

    /// Decodes an envelope from CBOR (a map with `$type` and `content`).
    ///
    /// The usual (definite-length) encoding is split without decoding and its content decoded straight
    /// into its type. Other encodings of small envelopes go through a generic CBOR value first; larger
    /// ones are refused, because that value can take many times the envelope's size in memory.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if let Some(parts) = crate::wire::cbor_fast::envelope_parts(bytes) {
            let suffix = check_type(parts.ty)?;
            let content = parts
                .content
                .ok_or_else(|| EnvelopeError::MissingContent(format!("{TYPE_PREFIX}{suffix}")))?;
            return Self::decode_content(suffix, CborBytes(content));
        }
        if bytes.len() > MAX_GENERIC_CBOR_ENVELOPE {
            return Err(EnvelopeError::Malformed(
                "invalid envelope: CBOR envelopes over 4096 bytes must use definite lengths and no tags"
                    .into(),
            ));
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "$type", default)]
            ty: Option<String>,
            #[serde(default)]
            content: Option<ciborium::Value>,
        }
        let mut reader = bytes;
        let raw: Raw = ciborium::from_reader(&mut reader)
            .map_err(|e| EnvelopeError::Malformed(format!("invalid envelope: {e}")))?;
        // Like the JSON decoder (and every other CBOR decoder here), one envelope must span all the bytes.
        if !reader.is_empty() {
            return Err(EnvelopeError::Malformed("invalid envelope: trailing bytes after CBOR value".into()));
        }
        let suffix = check_type(raw.ty.as_deref())?;
        let content = raw
            .content
            .filter(|c| !c.is_null())
            .ok_or_else(|| EnvelopeError::MissingContent(format!("{TYPE_PREFIX}{suffix}")))?;
        Self::decode_content(suffix, CborContent(content))
    }

    /// The request carried by this envelope, or `None` for types that are not requests (GetStatus is
    /// registered but has no handler and counts as a non-request here).
    pub fn into_request(self) -> Result<Request, Self> {
        Ok(match self {
            Envelope::Produce(r) => Request::Produce(r),
            Envelope::Peek(r) => Request::Peek(r),
            Envelope::ConsumeSegment(r) => Request::ConsumeSegment(r),
            Envelope::ConsumeSpace(r) => Request::ConsumeSpace(r),
            Envelope::Consume(r) => Request::Consume(r),
            Envelope::GetSpaces(r) => Request::GetSpaces(r),
            Envelope::GetSegments(r) => Request::GetSegments(r),
            Envelope::SubscribeToSegmentStatus(r) => Request::SubscribeToSegmentStatus(r),
            Envelope::SubscribeWorkers(r) => Request::SubscribeWorkers(r),
            Envelope::LeaseAcquire(r) => Request::LeaseAcquire(r),
            Envelope::LeaseRenew(r) => Request::LeaseRenew(r),
            Envelope::LeaseRelease(r) => Request::LeaseRelease(r),
            other => return Err(other),
        })
    }

    /// What the client sends on the stream after this request envelope, if anything: records for
    /// Produce, presence envelopes for SubscribeWorkers. Other operations (and envelopes that are not
    /// requests) read nothing after the first message.
    pub fn inbound_kind(&self) -> Option<crate::wire::MessageKind> {
        match self {
            Envelope::Produce(_) => Some(crate::wire::MessageKind::Record),
            Envelope::SubscribeWorkers(_) => Some(crate::wire::MessageKind::Envelope),
            _ => None,
        }
    }
}

/// A request the server handles: the content of the first envelope of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    Produce(Produce),
    Peek(Peek),
    ConsumeSegment(ConsumeSegment),
    ConsumeSpace(ConsumeSpace),
    Consume(Consume),
    GetSpaces(GetSpaces),
    GetSegments(GetSegments),
    SubscribeToSegmentStatus(SubscribeToSegmentStatus),
    SubscribeWorkers(SubscribeWorkers),
    LeaseAcquire(LeaseAcquire),
    LeaseRenew(LeaseRenew),
    LeaseRelease(LeaseRelease),
}

impl Request {
    /// The envelope that carries this request.
    pub fn into_envelope(self) -> Envelope {
        match self {
            Request::Produce(r) => Envelope::Produce(r),
            Request::Peek(r) => Envelope::Peek(r),
            Request::ConsumeSegment(r) => Envelope::ConsumeSegment(r),
            Request::ConsumeSpace(r) => Envelope::ConsumeSpace(r),
            Request::Consume(r) => Envelope::Consume(r),
            Request::GetSpaces(r) => Envelope::GetSpaces(r),
            Request::GetSegments(r) => Envelope::GetSegments(r),
            Request::SubscribeToSegmentStatus(r) => Envelope::SubscribeToSegmentStatus(r),
            Request::SubscribeWorkers(r) => Envelope::SubscribeWorkers(r),
            Request::LeaseAcquire(r) => Envelope::LeaseAcquire(r),
            Request::LeaseRenew(r) => Envelope::LeaseRenew(r),
            Request::LeaseRelease(r) => Envelope::LeaseRelease(r),
        }
    }

    /// What the server answers with on the stream (a client decodes with it).
    pub fn outbound_kind(&self) -> crate::wire::MessageKind {
        use crate::wire::MessageKind;
        match self {
            Request::Produce(_) | Request::SubscribeToSegmentStatus(_) => MessageKind::Status,
            Request::Peek(_)
            | Request::ConsumeSegment(_)
            | Request::ConsumeSpace(_)
            | Request::Consume(_) => MessageKind::Entry,
            Request::GetSpaces(_) | Request::GetSegments(_) => MessageKind::Name,
            Request::SubscribeWorkers(_) => MessageKind::Envelope,
            Request::LeaseAcquire(_) | Request::LeaseRenew(_) | Request::LeaseRelease(_) => {
                MessageKind::LeaseResult
            }
        }
    }

    /// The operation name used in logs, metrics and span names (`produce`, `consume_segment`, ...).
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Produce(_) => "produce",
            Request::Peek(_) => "peek",
            Request::ConsumeSegment(_) => "consume_segment",
            Request::ConsumeSpace(_) => "consume_space",
            Request::Consume(_) => "consume",
            Request::GetSpaces(_) => "get_spaces",
            Request::GetSegments(_) => "get_segments",
            Request::SubscribeToSegmentStatus(_) => "subscribe",
            Request::SubscribeWorkers(_) => "subscribe_workers",
            Request::LeaseAcquire(_) => "lease_acquire",
            Request::LeaseRenew(_) => "lease_renew",
            Request::LeaseRelease(_) => "lease_release",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::gojson;
    use alloc::string::ToString;

    #[test]
    fn go_error_texts() {
        let err = |s: &str| Envelope::from_json(s.as_bytes()).unwrap_err().to_string();
        assert_eq!(err(r#"{"content":{}}"#), "missing $type field in envelope");
        assert_eq!(err(r#"{"$type":"","content":{}}"#), "empty $type discriminator");
        assert_eq!(err(r#"{"$type":"x","content":{}}"#), "type \"x\" is not registered");
        assert_eq!(
            err(r#"{"$type":"streamkit://api/v1/peek"}"#),
            "missing content for type: \"streamkit://api/v1/peek\""
        );
        assert_eq!(
            err(r#"{"$type":"streamkit://api/v1/peek","content":null}"#),
            "missing content for type: \"streamkit://api/v1/peek\""
        );
        assert!(err("[1]").starts_with("invalid envelope"));
        assert!(
            err(r#"{"$type":"streamkit://api/v1/peek","content":{"space":1}}"#)
                .starts_with("invalid envelope content")
        );
    }

    #[test]
    fn any_key_order_and_unknown_keys() {
        let env = Envelope::from_json(
            br#"{"x":1,"content":{"segment":"b","space":"a","zzz":[1,{"q":null}]},"$type":"streamkit://api/v1/peek"}"#,
        )
        .unwrap();
        assert_eq!(env, Envelope::Peek(Peek { space: "a".into(), segment: "b".into() }));
        assert_eq!(
            gojson::to_vec(&env).unwrap(),
            br#"{"$type":"streamkit://api/v1/peek","content":{"space":"a","segment":"b"}}"#
        );
    }

    #[test]
    fn cbor_round_trip() {
        let env =
            Envelope::LeaseAcquire(LeaseAcquire { key: "k".into(), holder: "h".into(), ttl_seconds: 5 });
        let mut bytes = Vec::new();
        ciborium::into_writer(&env, &mut bytes).unwrap();
        assert_eq!(Envelope::from_cbor(&bytes).unwrap(), env);
        bytes.push(0x00);
        assert!(
            Envelope::from_cbor(&bytes).unwrap_err().to_string().contains("trailing bytes"),
            "trailing bytes are refused"
        );
    }

    #[test]
    fn non_requests_are_refused_by_into_request() {
        let env = Envelope::GetStatus(GetStatus {});
        assert_eq!(env.go_type_name(), "GetStatus");
        assert!(env.into_request().is_err());
        let req = Request::GetSpaces(GetSpaces {});
        assert_eq!(req.clone().into_envelope().into_request().unwrap(), req);
    }
}
