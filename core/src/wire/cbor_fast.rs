//! Hand-written CBOR for the hot types: [`Frame`], [`Record`] and [`Entry`].
//!
//! ciborium goes through serde and a byte-at-a-time reader (plus a 4 KiB scratch buffer per call), which
//! made CBOR decoding slower than JSON (see `benches/wire.rs`). This module writes and reads the same
//! bytes directly:
//!
//! * the writers produce **exactly** ciborium's output for the same value (definite lengths, shortest
//!   heads, struct fields in declaration order, skipped fields left out, UUIDs as 16-byte byte strings);
//! * the `parse_*` readers decode ciborium's output, and more generally any definite-length encoding of
//!   the type whose map keys are known text keys (any order, no duplicates), to the value ciborium
//!   would decode. Anything else (indefinite lengths, tags, unknown or duplicate keys, a struct as an
//!   array, text where bytes are expected, trailing bytes, malformed input) makes them return `None`,
//!   and the caller decodes with ciborium instead, which accepts or refuses it with its own error.
//!
//! So a codec built from "fast path, else ciborium" accepts exactly what ciborium accepts and yields
//! the same values; the property tests in `tests/cbor_fast.rs` and the `cbor_frame` fuzz target check
//! both halves of that claim.

use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use uuid::Uuid;

use super::frame::{ControlType, Frame, TraceContext};
use crate::api::{Entry, Metadata, Record, Trx};

const MAJOR_POSITIVE: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;
/// How deep [`is_plain_data`] follows nested arrays and maps before leaving the decision to ciborium.
const MAX_SKIP_DEPTH: u32 = 16;
const NULL: u8 = 0xf6;

// ------------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------------

/// The shortest head for `major` and `value`, as ciborium writes it.
#[inline]
fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    if value < 24 {
        out.push(m | value as u8);
    } else if value <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, value as u8]);
    } else if value <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

#[inline]
fn write_u64(out: &mut Vec<u8>, v: u64) {
    head(out, MAJOR_POSITIVE, v);
}

#[inline]
fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        // -1 - n is stored as n, i.e. the bitwise complement.
        head(out, MAJOR_NEGATIVE, !(v as u64));
    } else {
        head(out, MAJOR_POSITIVE, v as u64);
    }
}

#[inline]
fn write_text(out: &mut Vec<u8>, s: &str) {
    head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, MAJOR_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

#[inline]
fn write_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => write_bytes(out, b),
        None => out.push(NULL),
    }
}

#[inline]
fn write_uuid(out: &mut Vec<u8>, id: &Uuid) {
    write_bytes(out, id.as_bytes());
}

fn write_string_map(out: &mut Vec<u8>, map: &Metadata) {
    head(out, MAJOR_MAP, map.len() as u64);
    for (k, v) in map {
        write_text(out, k);
        write_text(out, v);
    }
}

/// Appends the CBOR form of `frame`: `[control, store_id, channel_id, payload, trace_context?]`.
pub fn write_frame(frame: &Frame, out: &mut Vec<u8>) {
    let with_trace = !frame.trace_context.is_empty();
    head(out, MAJOR_ARRAY, if with_trace { 5 } else { 4 });
    write_text(out, frame.control.as_str());
    write_uuid(out, &frame.store_id);
    write_uuid(out, &frame.channel_id);
    write_opt_bytes(out, frame.payload.as_deref());
    if with_trace {
        write_string_map(out, &frame.trace_context);
    }
}

/// Appends the CBOR form of `record`: `{"sequence", "payload", "metadata"?}`.
pub fn write_record(record: &Record, out: &mut Vec<u8>) {
    let with_metadata = !record.metadata.is_empty();
    head(out, MAJOR_MAP, 2 + u64::from(with_metadata));
    write_text(out, "sequence");
    write_u64(out, record.sequence);
    write_text(out, "payload");
    write_opt_bytes(out, record.payload.as_deref());
    if with_metadata {
        write_text(out, "metadata");
        write_string_map(out, &record.metadata);
    }
}

/// Appends the CBOR form of `entry`:
/// `{"sequence", "timestamp"?, "trx": {"id", "node", "number"}, "payload", "metadata"?, "space", "segment"}`.
pub fn write_entry(entry: &Entry, out: &mut Vec<u8>) {
    let with_timestamp = entry.timestamp != 0;
    let with_metadata = !entry.metadata.is_empty();
    head(out, MAJOR_MAP, 5 + u64::from(with_timestamp) + u64::from(with_metadata));
    write_text(out, "sequence");
    write_u64(out, entry.sequence);
    if with_timestamp {
        write_text(out, "timestamp");
        write_i64(out, entry.timestamp);
    }
    write_text(out, "trx");
    head(out, MAJOR_MAP, 3);
    write_text(out, "id");
    write_uuid(out, &entry.trx.id);
    write_text(out, "node");
    write_uuid(out, &entry.trx.node);
    write_text(out, "number");
    write_u64(out, entry.trx.number);
    write_text(out, "payload");
    write_opt_bytes(out, entry.payload.as_deref());
    if with_metadata {
        write_text(out, "metadata");
        write_string_map(out, &entry.metadata);
    }
    write_text(out, "space");
    write_text(out, &entry.space);
    write_text(out, "segment");
    write_text(out, &entry.segment);
}

// ------------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------------

/// A cursor over CBOR bytes. Every method returns `None` for input outside the fast path; nothing
/// indexes out of bounds and nothing allocates more than the input holds.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(taken)
    }

    /// A definite head: (major type, argument). Indefinite lengths and reserved values are refused.
    fn head(&mut self) -> Option<(u8, u64)> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        let major = first >> 5;
        let value = match first & 0x1f {
            v @ 0..=23 => u64::from(v),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        Some((major, value))
    }

    /// The argument of a head of the given major type.
    fn expect(&mut self, major: u8) -> Option<u64> {
        match self.head()? {
            (m, v) if m == major => Some(v),
            _ => None,
        }
    }

    fn len(&mut self, major: u8) -> Option<usize> {
        usize::try_from(self.expect(major)?).ok()
    }

    fn null(&mut self) -> bool {
        if self.peek() == Some(NULL) {
            self.bytes = &self.bytes[1..];
            true
        } else {
            false
        }
    }

    fn u64(&mut self) -> Option<u64> {
        self.expect(MAJOR_POSITIVE)
    }

    fn i64(&mut self) -> Option<i64> {
        match self.head()? {
            (MAJOR_POSITIVE, v) => i64::try_from(v).ok(),
            (MAJOR_NEGATIVE, v) => i64::try_from(v).ok().map(|n| !n),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.len(MAJOR_BYTES)?;
        self.take(len)
    }

    fn str(&mut self) -> Option<&'a str> {
        core::str::from_utf8(self.text()?).ok()
    }

    /// The raw bytes of a definite-length text string, not checked for UTF-8: for comparing with known
    /// ASCII keys, which a non-UTF-8 text can never equal.
    fn text(&mut self) -> Option<&'a [u8]> {
        let len = self.len(MAJOR_TEXT)?;
        self.take(len)
    }

    fn uuid(&mut self) -> Option<Uuid> {
        Uuid::from_slice(self.bytes()?).ok()
    }

    /// `Option<Vec<u8>>` as `opt_bytes` reads it: null or a byte string.
    fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        if self.null() { Some(None) } else { self.bytes().map(Some) }
    }

    /// A string field that reads `null` as empty (`null_as_default`).
    fn string_or_null(&mut self) -> Option<String> {
        if self.null() { Some(String::new()) } else { self.str().map(String::from) }
    }

    /// A text-to-text map read as serde fills a `BTreeMap`: pairs in any order, the last duplicate wins.
    fn string_map(&mut self) -> Option<Metadata> {
        let len = self.len(MAJOR_MAP)?;
        // Every pair takes at least 2 bytes: a huge declared length fails here, before any work. Maps
        // over the decoding bound are left to ciborium, which refuses them with the bound's text.
        if len > self.bytes.len() / 2 || len > crate::limits::MAX_DECODED_METADATA_ENTRIES {
            return None;
        }
        let mut map = Metadata::new();
        for _ in 0..len {
            let k = self.str()?;
            let v = self.str()?;
            map.insert(k.into(), v.into());
        }
        Some(map)
    }

    /// A string map field that reads `null` as empty (`null_as_default`).
    fn string_map_or_null(&mut self) -> Option<Metadata> {
        if self.null() { Some(Metadata::new()) } else { self.string_map() }
    }

    /// Reads a struct map: calls `field` with the index of each key in `keys` (each at most once), which
    /// must read the value. Missing fields keep their defaults (`#[serde(default)]`).
    fn fields(&mut self, keys: &[&str], mut field: impl FnMut(&mut Self, usize) -> Option<()>) -> Option<()> {
        let len = self.len(MAJOR_MAP)?;
        if len > keys.len() {
            return None;
        }
        let mut seen = 0u32;
        for _ in 0..len {
            // Unknown keys (including any that are not UTF-8) leave the fast path.
            let key = self.text()?;
            let i = keys.iter().position(|k| k.as_bytes() == key)?;
            if seen & (1 << i) != 0 {
                return None;
            }
            seen |= 1 << i;
            field(self, i)?;
        }
        Some(())
    }

    /// Skips one definite-length item (nested at most [`MAX_SKIP_DEPTH`] deep); `None` for tags,
    /// indefinite lengths, reserved values, too deep nesting or truncated input.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_SKIP_DEPTH {
            return None;
        }
        let (major, value) = self.head()?;
        match major {
            MAJOR_BYTES | MAJOR_TEXT => {
                self.take(usize::try_from(value).ok()?)?;
            }
            // Every item takes at least one byte, so a huge declared length fails on the input's end.
            MAJOR_ARRAY => {
                for _ in 0..value {
                    self.skip(depth + 1)?;
                }
            }
            MAJOR_MAP => {
                for _ in 0..value {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
            }
            MAJOR_TAG => return None,
            // Integers, simple values and floats: the head is the whole item.
            _ => {}
        }
        Some(())
    }

    fn end(&self) -> Option<()> {
        self.bytes.is_empty().then_some(())
    }
}

/// Whether `bytes` is certainly **not** a stream-control object, decided without decoding: a
/// well-formed, definite-length CBOR map with text keys, in which no `type` key maps to a text starting
/// with `mux::`. Such a value can never parse as stream control (its `type` is missing, not text, or not
/// a control type), so the caller may skip the full (ciborium) parse. `false` means "maybe": anything
/// else (a control candidate, indefinite lengths, tags, non-text keys, trailing bytes, malformed or
/// too deeply nested input) goes to the full parse, which decides exactly as before.
pub fn is_plain_data(bytes: &[u8]) -> bool {
    let mut r = Reader { bytes };
    let Some(len) = r.expect(MAJOR_MAP) else { return false };
    for _ in 0..len {
        // Keys are compared as bytes: a key that is not UTF-8 is not `type`, and ciborium refuses it anyway.
        let Some(key) = r.text() else { return false };
        if key == b"type" {
            let mut probe = Reader { bytes: r.bytes };
            if let Some((MAJOR_TEXT, n)) = probe.head()
                && usize::try_from(n).ok().and_then(|n| probe.take(n)).is_none_or(|t| t.starts_with(b"mux::"))
            {
                return false;
            }
        }
        if r.skip(0).is_none() {
            return false;
        }
    }
    r.end().is_some()
}

/// The two parts of a CBOR envelope `{"$type": text, "content": any}`, found without decoding the
/// content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeParts<'a> {
    /// The `$type` text (`None` when absent or `null`).
    pub ty: Option<&'a str>,
    /// The encoded `content` item (`None` when absent or `null`).
    pub content: Option<&'a [u8]>,
}

/// Splits a definite-length envelope map into its `$type` and the bytes of its `content`, skipping
/// unknown keys, so the content can be decoded straight into its type (no generic value tree, whose
/// size could be many times the input's). `None` outside the fast path (indefinite lengths, tags,
/// non-text or duplicate keys, nesting over 16 levels, trailing bytes, malformed input).
pub fn envelope_parts(bytes: &[u8]) -> Option<EnvelopeParts<'_>> {
    let mut r = Reader { bytes };
    let len = r.expect(MAJOR_MAP)?;
    let mut parts = EnvelopeParts { ty: None, content: None };
    let (mut seen_type, mut seen_content) = (false, false);
    for _ in 0..len {
        match r.text()? {
            b"$type" if !seen_type => {
                seen_type = true;
                parts.ty = if r.null() { None } else { Some(r.str()?) };
            }
            b"content" if !seen_content => {
                seen_content = true;
                let start = r.bytes;
                r.skip(0)?;
                let item = &start[..start.len() - r.bytes.len()];
                parts.content = (item != [NULL]).then_some(item);
            }
            b"$type" | b"content" => return None,
            _ => r.skip(0)?,
        }
    }
    r.end()?;
    Some(parts)
}

/// A frame decoded without copying its payload, so limits can be checked before allocating it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameView<'a> {
    /// The control type as written.
    pub control: &'a str,
    /// Store id.
    pub store_id: Uuid,
    /// Channel id.
    pub channel_id: Uuid,
    /// Payload bytes, borrowed from the input.
    pub payload: Option<&'a [u8]>,
    /// Trace propagation headers (empty when absent or `null`).
    pub trace_context: TraceContext,
}

impl FrameView<'_> {
    /// The owned frame (copies the payload).
    pub fn into_frame(self) -> Frame {
        Frame {
            control: ControlType::parse(self.control),
            store_id: self.store_id,
            channel_id: self.channel_id,
            payload: self.payload.map(<[u8]>::to_vec),
            trace_context: self.trace_context,
        }
    }
}

/// Reads a frame array of 4 or 5 elements; `None` outside the fast path (see the module docs).
pub fn parse_frame(bytes: &[u8]) -> Option<FrameView<'_>> {
    let mut r = Reader { bytes };
    let len = r.expect(MAJOR_ARRAY)?;
    if !(4..=5).contains(&len) {
        return None;
    }
    let control = r.str()?;
    let store_id = r.uuid()?;
    let channel_id = r.uuid()?;
    let payload = r.opt_bytes()?;
    let trace_context = if len == 5 { r.string_map_or_null()? } else { TraceContext::new() };
    r.end()?;
    Some(FrameView { control, store_id, channel_id, payload, trace_context })
}

/// Reads a [`Record`]; `None` outside the fast path (see the module docs). The payload is a slice of
/// `message`, not a copy.
pub fn parse_record(message: &Bytes) -> Option<Record> {
    let mut r = Reader { bytes: message };
    let mut record = Record::default();
    r.fields(&["sequence", "payload", "metadata"], |r, i| {
        match i {
            0 => record.sequence = r.u64()?,
            1 => record.payload = r.opt_bytes()?.map(|p| message.slice_ref(p)),
            _ => record.metadata = r.string_map_or_null()?,
        }
        Some(())
    })?;
    r.end()?;
    Some(record)
}

fn read_trx(r: &mut Reader<'_>) -> Option<Trx> {
    let mut trx = Trx::default();
    r.fields(&["id", "node", "number"], |r, i| {
        match i {
            0 => trx.id = r.uuid()?,
            1 => trx.node = r.uuid()?,
            _ => trx.number = r.u64()?,
        }
        Some(())
    })?;
    Some(trx)
}

/// Reads an [`Entry`]; `None` outside the fast path (see the module docs). The payload is a slice of
/// `message`, not a copy.
pub fn parse_entry(message: &Bytes) -> Option<Entry> {
    let mut r = Reader { bytes: message };
    let mut entry = Entry::default();
    r.fields(&["sequence", "timestamp", "trx", "payload", "metadata", "space", "segment"], |r, i| {
        match i {
            0 => entry.sequence = r.u64()?,
            1 => entry.timestamp = r.i64()?,
            2 => entry.trx = read_trx(r)?,
            3 => entry.payload = r.opt_bytes()?.map(|p| message.slice_ref(p)),
            4 => entry.metadata = r.string_map_or_null()?,
            5 => entry.space = r.string_or_null()?,
            _ => entry.segment = r.string_or_null()?,
        }
        Some(())
    })?;
    r.end()?;
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn ciborium<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn heads_are_the_shortest_at_every_boundary() {
        for v in [0u64, 23, 24, 255, 256, 65535, 65536, u32::MAX.into(), u64::from(u32::MAX) + 1, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, v);
            assert_eq!(out, ciborium(&v), "{v}");
            assert_eq!(Reader { bytes: &out }.u64(), Some(v));
        }
        for v in [0i64, -1, -24, -25, -256, -257, -65537, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(out, ciborium(&v), "{v}");
            assert_eq!(Reader { bytes: &out }.i64(), Some(v));
        }
    }

    #[test]
    fn out_of_range_and_non_canonical_input_is_left_to_ciborium() {
        // u64::MAX as a negative number does not fit an i64.
        assert_eq!(Reader { bytes: &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff] }.i64(), None);
        // Indefinite-length map, a tagged value, a truncated head.
        assert_eq!(parse_record(&Bytes::copy_from_slice(&[0xbf, 0xff])), None);
        assert_eq!(parse_record(&Bytes::copy_from_slice(&[0xc0, 0xa0])), None);
        assert_eq!(parse_record(&Bytes::copy_from_slice(&[0xb8])), None);
        // An unknown key and a duplicate key.
        let unknown = ciborium(&[("x", 1u8)].into_iter().collect::<alloc::collections::BTreeMap<_, _>>());
        assert_eq!(parse_record(&Bytes::copy_from_slice(&unknown)), None);
        let mut dup = vec![0xa2];
        for _ in 0..2 {
            dup.extend_from_slice(&[0x68]);
            dup.extend_from_slice(b"sequence");
            dup.push(0x01);
        }
        assert_eq!(parse_record(&Bytes::copy_from_slice(&dup)), None);
        // A map that claims more pairs than the input could hold.
        assert_eq!(
            Reader { bytes: &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff] }.string_map(),
            None
        );
    }

    #[test]
    fn an_empty_map_is_the_default_value() {
        assert_eq!(parse_entry(&Bytes::copy_from_slice(&[0xa0])), Some(Entry::default()));
        assert_eq!(parse_record(&Bytes::copy_from_slice(&[0xa0])), Some(Record::default()));
    }
}
