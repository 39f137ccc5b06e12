//! serde helpers shared by every message type, so one set of `Serialize`/`Deserialize` impls serves the
//! JSON codec (bytes as base64 strings, Go semantics) and the CBOR codec (bytes as byte strings).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use base64::Engine as _;
use core::fmt;
use core::marker::PhantomData;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::Serializer;

/// Decodes standard padded base64 (Go's `[]byte` JSON form), refusing anything else.
pub fn decode_base64<E: de::Error>(s: &str) -> Result<Vec<u8>, E> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| E::custom(format_args!("illegal base64 data: {e}")))
}

/// `Option<Bytes>` as Go's `[]byte`: `None` is `null`, `Some` is base64 (JSON) or a byte string (CBOR).
pub mod opt_bytes {
    use super::*;
    use bytes::Bytes;

    /// Serializes `None` as null and bytes as a byte string (base64 in human-readable formats).
    pub fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(b) => s.serialize_bytes(b),
        }
    }

    /// Accepts null, a base64 string or a byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        d.deserialize_any(OptBytesVisitor)
    }

    struct OptBytesVisitor;

    impl<'de> Visitor<'de> for OptBytesVisitor {
        type Value = Option<Bytes>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("base64 string, byte string or null")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            decode_base64(v).map(|b| Some(b.into()))
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(Some(Bytes::copy_from_slice(v)))
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            Ok(Some(v.into()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
}

/// Fields that Go leaves at their zero value when the JSON says `null` (maps, slices, strings).
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A map of a client-to-server message (record metadata, worker metadata, consume offsets), `null`
/// as empty like [`null_as_default`], refused once it holds more than
/// [`MAX_DECODED_METADATA_ENTRIES`](crate::limits::MAX_DECODED_METADATA_ENTRIES) entries: decoding
/// stops there instead of building a map of every key the frame can hold.
pub fn bounded_map<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    d.deserialize_any(BoundedMapVisitor(PhantomData))
}

struct BoundedMapVisitor<K, V>(PhantomData<(K, V)>);

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for BoundedMapVisitor<K, V> {
    type Value = BTreeMap<K, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map or null")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let limit = crate::limits::MAX_DECODED_METADATA_ENTRIES;
        let mut map = BTreeMap::new();
        while let Some((key, value)) = access.next_entry::<K, V>()? {
            if map.len() == limit {
                return Err(de::Error::custom(format_args!("map exceeds maximum of {limit} entries")));
            }
            map.insert(key, value);
        }
        Ok(map)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BTreeMap::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// `skip_serializing_if` helper for Go `omitempty` on integers.
pub fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// `skip_serializing_if` helper for Go `omitempty` on integers.
pub fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
