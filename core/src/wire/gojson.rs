//! A serde serializer that writes JSON exactly as Go's `encoding/json` does.
//!
//! serde_json cannot be configured in `no_std` builds, and its string escaping differs from Go's, so the
//! wire codec writes JSON with this serializer. What it reproduces (PROTOCOL.md §1, vectors README):
//!
//! * struct fields in declaration order (what serde derives emit), map keys in the order given (callers use
//!   `BTreeMap`, which matches Go's bytewise-sorted map keys);
//! * Go string escaping: `"` `\\` `\b` `\f` `\n` `\r` `\t` short escapes, other control characters and
//!   `<` `>` `&` U+2028 U+2029 as `\u00XX`/`\uXXXX`, everything else (DEL, `/`, non-ASCII) raw;
//! * byte strings as standard padded base64 (Go `[]byte`), `None`/unit as `null`;
//! * integers in decimal. Floats are not part of the protocol and are rejected.
//!
//! The serializer reports `is_human_readable() == true`, so types that serialize differently for binary
//! formats (UUIDs, lex keys, frames) take their text form here.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use base64::Engine as _;
use core::fmt;
use serde::ser::{self, Serialize};

/// Error raised while writing Go JSON: only unsupported shapes (floats, non-string map keys, enums with
/// data) can fail; writing into a `Vec` never does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoJsonError(String);

impl fmt::Display for GoJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ser::StdError for GoJsonError {}

impl ser::Error for GoJsonError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// Appends the Go `encoding/json` encoding of `value` to `out`.
pub fn to_writer<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), GoJsonError> {
    value.serialize(&mut GoJsonSerializer { out })
}

/// The Go `encoding/json` encoding of `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, GoJsonError> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// Appends `s` as a JSON string literal with Go's escaping rules.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let short: Option<u8> = match b {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            _ => None,
        };
        if let Some(esc) = short {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(&[b'\\', esc]);
            i += 1;
            start = i;
        } else if b < 0x20 || b == b'<' || b == b'>' || b == b'&' {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xF) as usize],
            ]);
            i += 1;
            start = i;
        } else if b == 0xE2 && i + 2 < bytes.len() && bytes[i + 1] == 0x80 && (bytes[i + 2] & 0xFE) == 0xA8 {
            // U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR (E2 80 A8 / E2 80 A9).
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(if bytes[i + 2] == 0xA8 { b"\\u2028" } else { b"\\u2029" });
            i += 3;
            start = i;
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `bytes` as a JSON string of standard padded base64 (Go's encoding of `[]byte`).
pub fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let start = out.len();
    let encoded_len = bytes.len().div_ceil(3) * 4;
    out.resize(start + encoded_len, 0);
    let written =
        base64::engine::general_purpose::STANDARD.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// The serializer; see the module documentation.
pub struct GoJsonSerializer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> GoJsonSerializer<'a> {
    /// A serializer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }
}

/// State of a JSON array or object being written.
pub struct Compound<'s, 'a> {
    ser: &'s mut GoJsonSerializer<'a>,
    first: bool,
}

impl Compound<'_, '_> {
    fn comma(&mut self) {
        if !self.first {
            self.ser.out.push(b',');
        }
        self.first = false;
    }
}

fn unsupported(what: &str) -> GoJsonError {
    GoJsonError(alloc::format!("go json: {what} is not supported"))
}

impl<'s, 'a> ser::Serializer for &'s mut GoJsonSerializer<'a> {
    type Ok = ();
    type Error = GoJsonError;
    type SerializeSeq = Compound<'s, 'a>;
    type SerializeTuple = Compound<'s, 'a>;
    type SerializeTupleStruct = Compound<'s, 'a>;
    type SerializeTupleVariant = ser::Impossible<(), GoJsonError>;
    type SerializeMap = Compound<'s, 'a>;
    type SerializeStruct = Compound<'s, 'a>;
    type SerializeStructVariant = ser::Impossible<(), GoJsonError>;

    fn is_human_readable(&self) -> bool {
        true
    }

    fn serialize_bool(self, v: bool) -> Result<(), GoJsonError> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), GoJsonError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), GoJsonError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), GoJsonError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), GoJsonError> {
        write_i64(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), GoJsonError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), GoJsonError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), GoJsonError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), GoJsonError> {
        write_u64(self.out, v);
        Ok(())
    }
    fn serialize_f32(self, _v: f32) -> Result<(), GoJsonError> {
        Err(unsupported("f32"))
    }
    fn serialize_f64(self, _v: f64) -> Result<(), GoJsonError> {
        Err(unsupported("f64"))
    }
    fn serialize_char(self, v: char) -> Result<(), GoJsonError> {
        let mut buf = [0u8; 4];
        write_str(self.out, v.encode_utf8(&mut buf));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), GoJsonError> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), GoJsonError> {
        write_base64(self.out, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), GoJsonError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), GoJsonError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), GoJsonError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), GoJsonError> {
        self.out.extend_from_slice(b"{}");
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), GoJsonError> {
        write_str(self.out, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), GoJsonError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), GoJsonError> {
        Err(unsupported("enum variant with data"))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'s, 'a>, GoJsonError> {
        self.out.push(b'[');
        Ok(Compound { ser: self, first: true })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'s, 'a>, GoJsonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'s, 'a>, GoJsonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, GoJsonError> {
        Err(unsupported("tuple variant"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'s, 'a>, GoJsonError> {
        self.out.push(b'{');
        Ok(Compound { ser: self, first: true })
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Compound<'s, 'a>, GoJsonError> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, GoJsonError> {
        Err(unsupported("struct variant"))
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = GoJsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GoJsonError> {
        self.comma();
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), GoJsonError> {
        self.ser.out.push(b']');
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = GoJsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GoJsonError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), GoJsonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = GoJsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GoJsonError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<(), GoJsonError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = GoJsonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), GoJsonError> {
        self.comma();
        key.serialize(MapKeySerializer { out: self.ser.out })
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GoJsonError> {
        self.ser.out.push(b':');
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), GoJsonError> {
        self.ser.out.push(b'}');
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = GoJsonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), GoJsonError> {
        self.comma();
        write_str(self.ser.out, key);
        self.ser.out.push(b':');
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), GoJsonError> {
        ser::SerializeMap::end(self)
    }
}

/// Map keys must be strings (Go also allows integers, which the protocol never uses).
struct MapKeySerializer<'a> {
    out: &'a mut Vec<u8>,
}

impl ser::Serializer for MapKeySerializer<'_> {
    type Ok = ();
    type Error = GoJsonError;
    type SerializeSeq = ser::Impossible<(), GoJsonError>;
    type SerializeTuple = ser::Impossible<(), GoJsonError>;
    type SerializeTupleStruct = ser::Impossible<(), GoJsonError>;
    type SerializeTupleVariant = ser::Impossible<(), GoJsonError>;
    type SerializeMap = ser::Impossible<(), GoJsonError>;
    type SerializeStruct = ser::Impossible<(), GoJsonError>;
    type SerializeStructVariant = ser::Impossible<(), GoJsonError>;

    fn is_human_readable(&self) -> bool {
        true
    }
    fn serialize_str(self, v: &str) -> Result<(), GoJsonError> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), GoJsonError> {
        let mut buf = [0u8; 4];
        write_str(self.out, v.encode_utf8(&mut buf));
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), GoJsonError> {
        value.serialize(self)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), GoJsonError> {
        write_str(self.out, variant);
        Ok(())
    }
    fn serialize_bool(self, _v: bool) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_i8(self, _v: i8) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_i16(self, _v: i16) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_i32(self, _v: i32) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_i64(self, _v: i64) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_u8(self, _v: u8) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_u16(self, _v: u16) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_u32(self, _v: u32) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_u64(self, _v: u64) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_f32(self, _v: f32) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_f64(self, _v: f64) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_none(self) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_unit(self) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, GoJsonError> {
        Err(unsupported("non-string map key"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, GoJsonError> {
        Err(unsupported("non-string map key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_go() {
        assert_eq!(escaped("a<b>&c"), r#""a\u003cb\u003e\u0026c""#);
        assert_eq!(escaped("\u{2028}\u{2029}"), r#""\u2028\u2029""#);
        assert_eq!(escaped("tab\tnl\ncr\rnul\0del\x7f"), "\"tab\\tnl\\ncr\\rnul\\u0000del\x7f\"");
        assert_eq!(escaped("\"q\" \\ /"), r#""\"q\" \\ /""#);
        assert_eq!(escaped("\x08\x0c\x1f"), r#""\b\f\u001f""#);
        assert_eq!(escaped("é 日本 😀"), "\"é 日本 😀\"");
        // A lone E2 80 prefix of another character is left alone.
        assert_eq!(escaped("\u{2030}"), "\"\u{2030}\"");
    }

    #[test]
    fn writes_structs_maps_and_bytes() {
        #[derive(serde::Serialize)]
        struct S<'a> {
            n: u64,
            i: i64,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            m: BTreeMap<&'a str, &'a str>,
            #[serde(with = "crate::wire::serde_helpers::opt_bytes")]
            b: Option<bytes::Bytes>,
            ok: bool,
            v: Vec<u8>,
        }
        let mut m = BTreeMap::new();
        m.insert("z", "1");
        m.insert("", "e");
        let s = S { n: 7, i: -3, m, b: Some(b"hello".to_vec().into()), ok: true, v: alloc::vec![1, 2] };
        assert_eq!(
            String::from_utf8(to_vec(&s).unwrap()).unwrap(),
            r#"{"n":7,"i":-3,"m":{"":"e","z":"1"},"b":"aGVsbG8=","ok":true,"v":[1,2]}"#
        );
        let s = S { n: 0, i: 0, m: BTreeMap::new(), b: None, ok: false, v: Vec::new() };
        assert_eq!(
            String::from_utf8(to_vec(&s).unwrap()).unwrap(),
            r#"{"n":0,"i":0,"b":null,"ok":false,"v":[]}"#
        );
        assert!(to_vec(&1.5f64).is_err());
    }
}
