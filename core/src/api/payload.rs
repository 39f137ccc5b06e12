//! Typed payloads: records built from a serializable value and entries read back into one, as JSON
//! (what Go producers usually write) or CBOR. The store itself never looks inside a payload; these
//! helpers only spare every user the same two lines of serde.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use streamkit_proto::api::{Entry, Record};
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! struct OrderPlaced { id: u32, total_cents: u64 }
//!
//! let record = Record::json(1, &OrderPlaced { id: 42, total_cents: 1999 })?;
//! assert_eq!(record.payload.as_deref(), Some(&br#"{"id":42,"total_cents":1999}"#[..]));
//!
//! let entry = Entry { payload: record.payload, ..Entry::default() };
//! assert_eq!(entry.json::<OrderPlaced>()?, OrderPlaced { id: 42, total_cents: 1999 });
//! # Ok::<(), streamkit_proto::api::PayloadError>(())
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Entry, Record};

/// How a typed payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PayloadFormat {
    /// JSON (`serde_json`).
    Json,
    /// CBOR (`ciborium`).
    Cbor,
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "JSON",
            Self::Cbor => "CBOR",
        })
    }
}

/// A value that could not be encoded as a payload, or a payload that is not the expected value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{format} payload: {message}")]
pub struct PayloadError {
    format: PayloadFormat,
    message: String,
}

impl PayloadError {
    fn new(format: PayloadFormat, error: impl fmt::Display) -> Self {
        Self { format, message: error.to_string() }
    }

    /// The format that failed.
    pub fn format(&self) -> PayloadFormat {
        self.format
    }
}

/// `value` as a JSON payload.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, PayloadError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| PayloadError::new(PayloadFormat::Json, e))
}

/// `value` as a CBOR payload.
pub fn to_cbor<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, PayloadError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| PayloadError::new(PayloadFormat::Cbor, e))?;
    Ok(Bytes::from(out))
}

/// A JSON payload read as a `T`.
pub fn from_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(payload).map_err(|e| PayloadError::new(PayloadFormat::Json, e))
}

/// A CBOR payload read as a `T`; the value must span the whole payload.
pub fn from_cbor<T: DeserializeOwned>(payload: &[u8]) -> Result<T, PayloadError> {
    let mut reader = payload;
    let value = ciborium::from_reader(&mut reader).map_err(|e| PayloadError::new(PayloadFormat::Cbor, e))?;
    if !reader.is_empty() {
        return Err(PayloadError::new(PayloadFormat::Cbor, "trailing bytes after the value"));
    }
    Ok(value)
}

impl Record {
    /// A record whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(sequence: u64, value: &T) -> Result<Self, PayloadError> {
        Ok(Self { sequence, payload: Some(to_json(value)?), ..Self::default() })
    }

    /// A record whose payload is `value` as CBOR.
    pub fn cbor<T: Serialize + ?Sized>(sequence: u64, value: &T) -> Result<Self, PayloadError> {
        Ok(Self { sequence, payload: Some(to_cbor(value)?), ..Self::default() })
    }
}

impl Entry {
    /// The payload read as JSON (an entry without payload reads as an empty one, which is an error).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        from_json(self.payload.as_deref().unwrap_or_default())
    }

    /// The payload read as CBOR.
    pub fn cbor<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        from_cbor(self.payload.as_deref().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use alloc::collections::BTreeMap;
    use alloc::vec;

    use super::*;

    fn sample() -> BTreeMap<String, Vec<u32>> {
        BTreeMap::from([("a".into(), vec![1, 2]), ("b".into(), vec![])])
    }

    #[test]
    fn records_and_entries_round_trip_in_both_formats() {
        let json = Record::json(7, &sample()).unwrap();
        assert_eq!(json.sequence, 7);
        let entry = Entry { payload: json.payload, ..Entry::default() };
        assert_eq!(entry.json::<BTreeMap<String, Vec<u32>>>().unwrap(), sample());

        let cbor = Record::cbor(8, &sample()).unwrap();
        let entry = Entry { payload: cbor.payload, ..Entry::default() };
        assert_eq!(entry.cbor::<BTreeMap<String, Vec<u32>>>().unwrap(), sample());
    }

    #[test]
    fn a_payload_of_another_shape_or_format_is_an_error_naming_its_format() {
        let entry = Entry { payload: Some(Bytes::from_static(b"[1,2]")), ..Entry::default() };
        let error = entry.json::<BTreeMap<String, u32>>().unwrap_err();
        assert_eq!(error.format(), PayloadFormat::Json);
        assert!(error.to_string().starts_with("JSON payload: invalid type"), "{error}");
        assert_eq!(entry.cbor::<u32>().unwrap_err().format(), PayloadFormat::Cbor);
        assert!(Entry::default().json::<u32>().is_err());
    }

    #[test]
    fn cbor_refuses_trailing_bytes() {
        let mut payload = to_cbor(&1u32).unwrap().to_vec();
        payload.push(0);
        assert_eq!(
            from_cbor::<u32>(&payload).unwrap_err().to_string(),
            "CBOR payload: trailing bytes after the value"
        );
    }
}
