//! Stream-control objects (PROTOCOL.md §2.6): how a logical stream ends, carried inside a frame's payload.
//!
//! ```text
//! {"type":"mux::close"}                  end of what this side sends (half-close)
//! {"type":"mux::close","err":"<text>"}   end with an error
//! {"type":"mux::error","err":"<text>"}   rejection, inside `error` control frames
//! ```
//!
//! Only objects whose `type` starts with `mux::` are stream control; any other object (even one with a
//! `type` field) is application data.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::Codec;
use crate::stream::EndReason;

/// Prefix that marks a payload as stream control.
pub const CONTROL_PREFIX: &str = "mux::";

/// A parsed stream-control object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamControl {
    /// `mux::close`, optionally with an error text.
    Close {
        /// The error text, if the stream ended with an error.
        err: Option<String>,
    },
    /// `mux::error` with its text.
    Error {
        /// The error text.
        err: String,
    },
    /// Another `mux::*` type; the receiver ends the stream with `unknown error type "<type>": <err>`.
    Unknown {
        /// The full type string.
        kind: String,
        /// The `err` field, possibly empty.
        err: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<alloc::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none", borrow, default)]
    err: Option<alloc::borrow::Cow<'a, str>>,
}

impl StreamControl {
    /// `mux::close` without error.
    pub const fn close() -> Self {
        StreamControl::Close { err: None }
    }

    /// `mux::close` with `err` (an empty text is a plain close, as Go's `omitempty` makes it).
    pub fn close_with(err: impl Into<String>) -> Self {
        let err = err.into();
        StreamControl::Close { err: if err.is_empty() { None } else { Some(err) } }
    }

    /// `mux::error` with `err`.
    pub fn error(err: impl Into<String>) -> Self {
        StreamControl::Error { err: err.into() }
    }

    fn raw(&self) -> Raw<'_> {
        use alloc::borrow::Cow::Borrowed;
        match self {
            StreamControl::Close { err } => {
                Raw { kind: Some(Borrowed("mux::close")), err: err.as_deref().map(Borrowed) }
            }
            StreamControl::Error { err } => Raw {
                kind: Some(Borrowed("mux::error")),
                err: (!err.is_empty()).then_some(Borrowed(err.as_str())),
            },
            StreamControl::Unknown { kind, err } => Raw {
                kind: Some(Borrowed(kind.as_str())),
                err: (!err.is_empty()).then_some(Borrowed(err.as_str())),
            },
        }
    }

    /// Encodes the object with `codec`.
    pub fn encode(&self, codec: Codec) -> Vec<u8> {
        codec.encode_value(&self.raw())
    }

    /// Parses `payload` as a stream-control object; `None` means it is ordinary data.
    ///
    /// Cheap for data: JSON payloads that do not contain `mux::`, and CBOR maps that
    /// [`is_plain_data`](super::cbor_fast::is_plain_data) rules out, are rejected without parsing.
    pub fn parse(codec: Codec, payload: &[u8]) -> Option<Self> {
        let raw: Raw<'_> = match codec {
            Codec::Json => {
                let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
                if *first != b'{' || !contains(payload, CONTROL_PREFIX.as_bytes()) {
                    return None;
                }
                serde_json::from_slice(payload).ok()?
            }
            Codec::Cbor => {
                // Maps only (major type 5); anything else is data.
                if payload.first().map(|b| b >> 5) != Some(5) {
                    return None;
                }
                // Records and entries are maps too: rule them out without a full ciborium decode
                // (which also zeroes a 4 KiB scratch buffer per call).
                if super::cbor_fast::is_plain_data(payload) {
                    return None;
                }
                let owned: RawOwned = super::cbor::from_slice(payload).ok()?;
                return owned.into_control();
            }
        };
        let kind = raw.kind?;
        let kind = kind.as_ref();
        if !kind.starts_with(CONTROL_PREFIX) {
            return None;
        }
        let err = raw.err.map(|e| e.into_owned());
        Some(Self::from_parts(kind, err))
    }

    fn from_parts(kind: &str, err: Option<String>) -> Self {
        match kind {
            "mux::close" => StreamControl::Close { err: err.filter(|e| !e.is_empty()) },
            "mux::error" => StreamControl::Error { err: err.unwrap_or_default() },
            other => StreamControl::Unknown { kind: other.into(), err: err.unwrap_or_default() },
        }
    }

    /// Why the stream ended, for its reader (PROTOCOL.md §2.6): `None` for a clean end.
    pub fn into_reader_error(self) -> Option<EndReason> {
        match self {
            StreamControl::Close { err: None } => None,
            StreamControl::Close { err: Some(e) } => Some(EndReason::RemoteClosed(e)),
            StreamControl::Error { err } => Some(EndReason::RemoteError(err)),
            StreamControl::Unknown { kind, err } => Some(EndReason::UnknownControl { kind, err }),
        }
    }
}

#[derive(Deserialize)]
struct RawOwned {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    err: Option<String>,
}

impl RawOwned {
    fn into_control(self) -> Option<StreamControl> {
        let kind = self.kind?;
        kind.starts_with(CONTROL_PREFIX).then(|| StreamControl::from_parts(&kind, self.err))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms_match_go() {
        assert_eq!(StreamControl::close().encode(Codec::Json), br#"{"type":"mux::close"}"#);
        assert_eq!(
            StreamControl::close_with("sequence gap: expected 3, got 4").encode(Codec::Json),
            br#"{"type":"mux::close","err":"sequence gap: expected 3, got 4"}"#
        );
        assert_eq!(
            StreamControl::error("access denied").encode(Codec::Json),
            br#"{"type":"mux::error","err":"access denied"}"#
        );
    }

    #[test]
    fn parse_and_reader_errors() {
        for codec in [Codec::Json, Codec::Cbor] {
            let p = |c: StreamControl| StreamControl::parse(codec, &c.encode(codec));
            assert_eq!(p(StreamControl::close()).unwrap().into_reader_error(), None);
            assert_eq!(
                p(StreamControl::close_with("boom")).unwrap().into_reader_error().unwrap().to_string(),
                "remote closed stream: boom"
            );
            assert_eq!(
                p(StreamControl::error("oops")).unwrap().into_reader_error().unwrap().to_string(),
                "remote error: oops"
            );
            let weird = StreamControl::Unknown { kind: "mux::weird".into(), err: "x".into() };
            assert_eq!(
                p(weird).unwrap().into_reader_error().unwrap().to_string(),
                "unknown error type \"mux::weird\": x"
            );
        }
    }

    #[test]
    fn domain_objects_are_data() {
        assert_eq!(StreamControl::parse(Codec::Json, br#"{"type":"close","data":"legit"}"#), None);
        assert_eq!(
            StreamControl::parse(Codec::Json, br#"{"sequence":1,"metadata":{"type":"mux::close"}}"#),
            None
        );
        assert_eq!(StreamControl::parse(Codec::Json, br#""mux::close""#), None);
        assert_eq!(StreamControl::parse(Codec::Json, b"{not json mux::"), None);
        assert_eq!(
            StreamControl::parse(Codec::Json, br#" {"err":"e","type":"mux::close","x":1}"#),
            Some(StreamControl::close_with("e"))
        );
    }

    /// The full CBOR parse, without the [`is_plain_data`] shortcut.
    ///
    /// [`is_plain_data`]: super::super::cbor_fast::is_plain_data
    fn cbor_full_parse(payload: &[u8]) -> Option<StreamControl> {
        super::super::cbor::from_slice::<RawOwned>(payload).ok()?.into_control()
    }

    fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    #[test]
    fn cbor_shortcut_rules_out_records_and_entries_only() {
        use crate::api::{Entry, Record};
        use crate::wire::cbor_fast::is_plain_data;
        let record = Codec::Cbor.encode_message(&crate::wire::Message::Record(Record::new(7, "mux::close")));
        let entry = Codec::Cbor.encode_message(&crate::wire::Message::Entry(Entry::default()));
        assert!(is_plain_data(&record) && is_plain_data(&entry));
        for control in [StreamControl::close(), StreamControl::close_with("e"), StreamControl::error("x")] {
            let bytes = control.encode(Codec::Cbor);
            assert!(!is_plain_data(&bytes));
            assert_eq!(StreamControl::parse(Codec::Cbor, &bytes), Some(control));
        }
        // A `type` that is not a control type, or not text, is data either way.
        let map = |pairs: &[(&str, ciborium::Value)]| {
            ciborium::Value::Map(
                pairs.iter().map(|(k, v)| (ciborium::Value::Text((*k).into()), v.clone())).collect(),
            )
        };
        assert!(is_plain_data(&cbor(&map(&[("type", ciborium::Value::Text("close".into()))]))));
        assert!(is_plain_data(&cbor(&map(&[("type", ciborium::Value::Integer(1.into()))]))));
        // Indefinite-length text (the control type split in chunks): left to the full parse.
        let chunked = [
            0xa1, 0x64, b't', b'y', b'p', b'e', 0x7f, 0x63, b'm', b'u', b'x', 0x67, b':', b':', b'c', b'l',
            b'o', b's', b'e', 0xff,
        ];
        assert!(!is_plain_data(&chunked));
        assert_eq!(StreamControl::parse(Codec::Cbor, &chunked), cbor_full_parse(&chunked));
    }

    proptest::proptest! {
        /// Whatever the bytes, the shortcut never changes the answer of the full parse.
        #[test]
        fn cbor_shortcut_agrees_with_the_full_parse(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                                                   head in 0xa0u8..=0xbf, with_type in proptest::bool::ANY) {
            let mut bytes = vec![head];
            if with_type {
                bytes.extend_from_slice(&[0x64, b't', b'y', b'p', b'e']);
            }
            bytes.extend_from_slice(&tail);
            proptest::prop_assert_eq!(StreamControl::parse(Codec::Cbor, &bytes), cbor_full_parse(&bytes));
        }
    }
}
