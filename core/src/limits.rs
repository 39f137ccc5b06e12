//! Limits on what one request may ask of a server, checked by the node before anything is stored, and
//! the exact texts of their refusals.
//!
//! The wire limits ([`crate::wire::Limits`]) bound one frame and one inner message; these bound what a
//! message may contain: the length of names (they become storage keys, log fields and index rows), the
//! metadata a record or a worker carries, and how many spaces one consume merges. Without them a single
//! client could, within the frame limit, make the server write gigabytes of keys (a 4 MiB space name
//! repeated in every key of every entry) or hold a decoded map of hundreds of thousands of entries.
//!
//! A request over a limit is refused with a text of the form `<what> exceeds maximum of <N> <unit>`
//! (the form of Go's `ttl_seconds exceeds maximum of 86400`):
//!
//! | refusal | answer |
//! |---|---|
//! | `space exceeds maximum of 256 bytes` | the stream is closed with it (lease requests: `LeaseResult{ok:false,message}`) |
//! | `segment exceeds maximum of 256 bytes` | same |
//! | `lease key exceeds maximum of 256 bytes`, `lease holder exceeds maximum of 256 bytes` | `LeaseResult{ok:false,message}` |
//! | `record metadata exceeds maximum of 128 entries`, `record metadata exceeds maximum of 32768 bytes` | the produce stream is closed with it; chunks committed before stay committed |
//! | `worker metadata exceeds maximum of 128 entries`, `worker metadata exceeds maximum of 4096 bytes` | the worker stream is closed with it |
//! | `consume exceeds maximum of 256 spaces` | the stream is closed with it |
//! | `worker inventory exceeds maximum of 262144 bytes` | the registering worker stream is closed with it (the workers of this server instance, with their metadata and 64 bytes each, would exceed the bound) |
//!
//! Metadata is counted as the bytes of its keys and values. Decoders refuse more than
//! [`MAX_DECODED_METADATA_ENTRIES`] entries in any request map whatever the configuration, so that the
//! decoded form of a message stays within a small multiple of its encoded size.

use alloc::format;
use alloc::string::String;

use crate::api::{Metadata, Record, Request};

/// Most metadata entries a decoder accepts in one client-to-server map (records, worker
/// registrations, consume offsets), whatever [`RequestLimits`] say: a decoding bound, so that a map of
/// tiny keys cannot cost many times its encoded size before the limits are checked.
pub const MAX_DECODED_METADATA_ENTRIES: usize = 4096;

/// Default [`RequestLimits::max_name_bytes`].
pub const DEFAULT_MAX_NAME_BYTES: usize = 256;
/// Default [`RequestLimits::max_metadata_entries`].
pub const DEFAULT_MAX_METADATA_ENTRIES: usize = 128;
/// Default [`RequestLimits::max_metadata_bytes`].
pub const DEFAULT_MAX_METADATA_BYTES: usize = 32 << 10;
/// Default [`RequestLimits::max_worker_metadata_bytes`].
pub const DEFAULT_MAX_WORKER_METADATA_BYTES: usize = 4 << 10;
/// Default [`RequestLimits::max_consume_spaces`].
pub const DEFAULT_MAX_CONSUME_SPACES: usize = 256;
/// Default [`RequestLimits::max_inventory_bytes`].
pub const DEFAULT_MAX_INVENTORY_BYTES: usize = 256 << 10;
/// What one worker counts towards [`RequestLimits::max_inventory_bytes`] besides its metadata (its id,
/// timestamp and encoding).
pub const WORKER_INVENTORY_OVERHEAD: usize = 64;

/// What one request may contain. [`Default`] gives the documented defaults; every field can be raised
/// or lowered by the operator (`streamkit serve --max-name-bytes …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest space or segment name, and longest lease key or holder, in bytes (256). Names are part
    /// of every storage key of their entries; PostgreSQL refuses index rows over about 2.7 KB, so keep
    /// `2 × max_name_bytes` well below that there.
    pub max_name_bytes: usize,
    /// Most metadata entries of one record (128).
    pub max_metadata_entries: usize,
    /// Most metadata bytes (keys and values) of one record (32 KiB).
    pub max_metadata_bytes: usize,
    /// Most metadata bytes (keys and values) a worker registers with (4 KiB): every inventory carries
    /// every worker's metadata to every observer, so it is kept small. Its entries are capped by
    /// `max_metadata_entries`.
    pub max_worker_metadata_bytes: usize,
    /// Most spaces one `Consume` merges (256).
    pub max_consume_spaces: usize,
    /// Most bytes of the workers registered with one store on this server instance (1 MiB): their
    /// metadata plus [`WORKER_INVENTORY_OVERHEAD`] each (256 KiB). Every change of the inventory is sent whole
    /// to every observer, so it must stay small; this also bounds the number of workers.
    pub max_inventory_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_name_bytes: DEFAULT_MAX_NAME_BYTES,
            max_metadata_entries: DEFAULT_MAX_METADATA_ENTRIES,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            max_worker_metadata_bytes: DEFAULT_MAX_WORKER_METADATA_BYTES,
            max_consume_spaces: DEFAULT_MAX_CONSUME_SPACES,
            max_inventory_bytes: DEFAULT_MAX_INVENTORY_BYTES,
        }
    }
}

/// Which limit refused a request (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKind {
    /// A space or segment name.
    Name,
    /// A lease key or holder.
    LeaseField,
    /// A record's metadata.
    RecordMetadata,
    /// A worker's metadata.
    WorkerMetadata,
    /// The spaces of a consume.
    ConsumeSpaces,
    /// The workers of a store.
    WorkerInventory,
}

impl LimitKind {
    /// Every kind.
    pub const ALL: [LimitKind; 6] = [
        LimitKind::Name,
        LimitKind::LeaseField,
        LimitKind::RecordMetadata,
        LimitKind::WorkerMetadata,
        LimitKind::ConsumeSpaces,
        LimitKind::WorkerInventory,
    ];

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Name => "name",
            LimitKind::LeaseField => "lease_field",
            LimitKind::RecordMetadata => "record_metadata",
            LimitKind::WorkerMetadata => "worker_metadata",
            LimitKind::ConsumeSpaces => "consume_spaces",
            LimitKind::WorkerInventory => "worker_inventory",
        }
    }
}

/// A request refused by a limit: which one, and the text the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitExceeded {
    /// The limit.
    pub kind: LimitKind,
    /// The refusal text (see the [module](self) docs).
    pub message: String,
}

fn exceeded(kind: LimitKind, what: &str, limit: usize, unit: &str) -> LimitExceeded {
    LimitExceeded { kind, message: format!("{what} exceeds maximum of {limit} {unit}") }
}

impl RequestLimits {
    /// Checks a name-like string (space, segment, lease key or holder) against `max_name_bytes`.
    fn short(&self, kind: LimitKind, what: &str, value: &str) -> Result<(), LimitExceeded> {
        if value.len() > self.max_name_bytes {
            return Err(exceeded(kind, what, self.max_name_bytes, "bytes"));
        }
        Ok(())
    }

    fn name(&self, what: &str, name: &str) -> Result<(), LimitExceeded> {
        self.short(LimitKind::Name, what, name)
    }

    fn metadata(
        &self,
        kind: LimitKind,
        what: &str,
        metadata: &Metadata,
        max_bytes: usize,
    ) -> Result<(), LimitExceeded> {
        if metadata.len() > self.max_metadata_entries {
            return Err(exceeded(kind, what, self.max_metadata_entries, "entries"));
        }
        if metadata_bytes(metadata) > max_bytes {
            return Err(exceeded(kind, what, max_bytes, "bytes"));
        }
        Ok(())
    }

    /// Checks the first message of a stream.
    pub fn check_request(&self, request: &Request) -> Result<(), LimitExceeded> {
        let space_and_segment = |space: &str, segment: &str| {
            self.name("space", space)?;
            self.name("segment", segment)
        };
        let lease = |key: &str, holder: &str| {
            self.short(LimitKind::LeaseField, "lease key", key)?;
            self.short(LimitKind::LeaseField, "lease holder", holder)
        };
        match request {
            Request::Produce(r) => space_and_segment(&r.space, &r.segment),
            Request::Peek(r) => space_and_segment(&r.space, &r.segment),
            Request::ConsumeSegment(r) => space_and_segment(&r.space, &r.segment),
            Request::SubscribeToSegmentStatus(r) => space_and_segment(&r.space, &r.segment),
            Request::ConsumeSpace(r) => self.name("space", &r.space),
            Request::GetSegments(r) => self.name("space", &r.space),
            Request::Consume(r) => {
                if r.offsets.len() > self.max_consume_spaces {
                    return Err(exceeded(
                        LimitKind::ConsumeSpaces,
                        "consume",
                        self.max_consume_spaces,
                        "spaces",
                    ));
                }
                r.offsets.keys().try_for_each(|space| self.name("space", space))
            }
            Request::GetSpaces(_) => Ok(()),
            Request::SubscribeWorkers(r) => self.metadata(
                LimitKind::WorkerMetadata,
                "worker metadata",
                &r.metadata,
                self.max_worker_metadata_bytes,
            ),
            Request::LeaseAcquire(r) => lease(&r.key, &r.holder),
            Request::LeaseRenew(r) => lease(&r.key, &r.holder),
            Request::LeaseRelease(r) => lease(&r.key, &r.holder),
        }
    }

    /// Checks that a store whose workers count `current` bytes (see
    /// [`max_inventory_bytes`](Self::max_inventory_bytes)) may register one more with `metadata`.
    pub fn check_inventory(&self, current: usize, metadata: &Metadata) -> Result<(), LimitExceeded> {
        let after = current.saturating_add(worker_inventory_bytes(metadata));
        if after > self.max_inventory_bytes {
            return Err(exceeded(
                LimitKind::WorkerInventory,
                "worker inventory",
                self.max_inventory_bytes,
                "bytes",
            ));
        }
        Ok(())
    }

    /// Checks one record of a produce.
    pub fn check_record(&self, record: &Record) -> Result<(), LimitExceeded> {
        self.metadata(LimitKind::RecordMetadata, "record metadata", &record.metadata, self.max_metadata_bytes)
    }
}

/// What one worker with `metadata` counts towards [`RequestLimits::max_inventory_bytes`].
pub fn worker_inventory_bytes(metadata: &Metadata) -> usize {
    WORKER_INVENTORY_OVERHEAD.saturating_add(metadata_bytes(metadata))
}

/// Bytes of a metadata map's keys and values.
pub fn metadata_bytes(metadata: &Metadata) -> usize {
    metadata.iter().map(|(k, v)| k.len().saturating_add(v.len())).fold(0, usize::saturating_add)
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec::Vec;

    use super::*;
    use crate::api::{Consume, LeaseAcquire, Produce, SubscribeWorkers};
    use crate::lexkey::LexKey;

    fn metadata(entries: usize, value_len: usize) -> Metadata {
        (0..entries).map(|i| (i.to_string(), "v".repeat(value_len))).collect()
    }

    #[test]
    fn names_are_checked_with_exact_texts() {
        let limits = RequestLimits { max_name_bytes: 4, ..RequestLimits::default() };
        let produce = |space: &str, segment: &str| {
            Request::Produce(Produce { space: space.into(), segment: segment.into() })
        };
        assert_eq!(limits.check_request(&produce("abcd", "wxyz")), Ok(()));
        let err = limits.check_request(&produce("abcde", "s")).unwrap_err();
        assert_eq!((err.kind, err.message.as_str()), (LimitKind::Name, "space exceeds maximum of 4 bytes"));
        let err = limits.check_request(&produce("a", "segment")).unwrap_err();
        assert_eq!(err.message, "segment exceeds maximum of 4 bytes");
        // Bytes, not characters.
        assert!(limits.check_request(&produce("ééé", "s")).is_err());
        let lease =
            Request::LeaseAcquire(LeaseAcquire { key: "k".into(), holder: "holder".into(), ttl_seconds: 1 });
        let err = limits.check_request(&lease).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (LimitKind::LeaseField, "lease holder exceeds maximum of 4 bytes")
        );
    }

    #[test]
    fn metadata_is_counted_in_entries_and_bytes() {
        let limits = RequestLimits::default();
        let record = |m| Record { sequence: 1, payload: None, metadata: m };
        assert_eq!(limits.check_record(&record(metadata(128, 10))), Ok(()));
        let err = limits.check_record(&record(metadata(129, 0))).unwrap_err();
        assert_eq!(err.message, "record metadata exceeds maximum of 128 entries");
        let err = limits.check_record(&record(metadata(2, 17 << 10))).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (LimitKind::RecordMetadata, "record metadata exceeds maximum of 32768 bytes")
        );
        let worker = Request::SubscribeWorkers(SubscribeWorkers {
            worker_id: uuid::Uuid::from_u128(1),
            metadata: metadata(1, 5000),
            heartbeat_interval_seconds: 0,
        });
        let err = limits.check_request(&worker).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (LimitKind::WorkerMetadata, "worker metadata exceeds maximum of 4096 bytes")
        );
    }

    #[test]
    fn decoders_refuse_maps_over_the_decoding_bound() {
        use crate::wire::{Codec, Frame, Limits, Message, MessageKind, WireError};
        let huge = metadata(MAX_DECODED_METADATA_ENTRIES + 1, 0);
        let fits = metadata(MAX_DECODED_METADATA_ENTRIES, 0);
        for codec in [Codec::Json, Codec::Cbor] {
            let record =
                |m: &Metadata| Message::Record(Record { sequence: 1, payload: None, metadata: m.clone() });
            let encoded = codec.encode_message(&record(&huge));
            let err = codec.decode_message(MessageKind::Record, &encoded).unwrap_err();
            // JSON adds the position.
            assert!(
                matches!(&err, WireError::Malformed(text) if text.starts_with("map exceeds maximum of 4096 entries")),
                "{codec:?}: {err}"
            );
            let encoded = codec.encode_message(&record(&fits));
            assert_eq!(codec.decode_message(MessageKind::Record, &encoded), Ok(record(&fits)), "{codec:?}");
            // A frame's trace context too (a frame that does not decode ends the connection).
            let mut frame = Frame::data(uuid::Uuid::nil(), uuid::Uuid::nil(), alloc::vec![]);
            frame.trace_context = huge.clone();
            let encoded = codec.encode_frame(&frame);
            assert!(codec.decode_frame(&encoded, &Limits::default()).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn cbor_envelopes_decode_without_a_generic_value() {
        use crate::api::Envelope;
        use crate::wire::{Codec, Message, MessageKind};
        let worker = |metadata| {
            Message::Envelope(Envelope::SubscribeWorkers(SubscribeWorkers {
                worker_id: uuid::Uuid::from_u128(1),
                metadata,
                heartbeat_interval_seconds: 3,
            }))
        };
        // The usual encoding: content decoded straight into its type, maps bounded while decoding.
        let fits = worker(metadata(10, 3));
        assert_eq!(
            Codec::Cbor.decode_message(MessageKind::Envelope, &Codec::Cbor.encode_message(&fits)),
            Ok(fits)
        );
        let huge = Codec::Cbor.encode_message(&worker(metadata(MAX_DECODED_METADATA_ENTRIES + 1, 0)));
        let err = Codec::Cbor.decode_message(MessageKind::Envelope, &huge).unwrap_err().to_string();
        assert!(err.contains("map exceeds maximum of 4096 entries"), "{err}");

        // Indefinite lengths: small envelopes still decode, large ones are refused.
        fn text(out: &mut Vec<u8>, t: &str) {
            ciborium::into_writer(&t, &mut *out).unwrap();
        }
        let indefinite = |pairs: usize| {
            let mut out = alloc::vec![0xbf];
            text(&mut out, "$type");
            text(&mut out, "streamkit://api/v1/subscribe_workers");
            text(&mut out, "content");
            out.push(0xbf);
            text(&mut out, "metadata");
            out.push(0xbf);
            for i in 0..pairs {
                text(&mut out, &i.to_string());
                text(&mut out, "v");
            }
            out.extend_from_slice(&[0xff, 0xff, 0xff]);
            out
        };
        let small = Codec::Cbor.decode_message(MessageKind::Envelope, &indefinite(3)).unwrap();
        assert!(matches!(small, Message::Envelope(Envelope::SubscribeWorkers(w)) if w.metadata.len() == 3));
        let err =
            Codec::Cbor.decode_message(MessageKind::Envelope, &indefinite(2000)).unwrap_err().to_string();
        assert!(err.contains("must use definite lengths"), "{err}");
    }

    #[test]
    fn consume_spaces_are_counted() {
        let limits = RequestLimits { max_consume_spaces: 2, ..RequestLimits::default() };
        let consume = |n: usize| {
            Request::Consume(Consume {
                offsets: (0..n).map(|i| (i.to_string(), LexKey::default())).collect(),
                ..Consume::default()
            })
        };
        assert_eq!(limits.check_request(&consume(2)), Ok(()));
        assert_eq!(
            limits.check_request(&consume(3)).unwrap_err().message,
            "consume exceeds maximum of 2 spaces"
        );
        assert_eq!(metadata_bytes(&metadata(3, 2)), 9);
    }
}
