//! Data types of PROTOCOL.md §1.2: what producers write, what readers get back, and the status, lease and
//! presence messages.
//!
//! Field order is declaration order and matches Go's, so the JSON codec reproduces Go's bytes. Byte fields
//! are `Option<Bytes>` because Go distinguishes a nil slice (`null`) from an empty one (`""`); `Bytes`
//! so that a payload travels from the frame it arrived in to storage, and from a stored value to the
//! frame it leaves in, without being copied at each layer.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::lexkey::{LexKey, Part};
use crate::wire::serde_helpers::{bounded_map, is_zero_i64, null_as_default, opt_bytes};

/// Free-form string metadata of a record; serialized with keys in bytewise order, like Go maps.
pub type Metadata = BTreeMap<String, String>;

/// A record to append (client → server during Produce).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// The sequence this record must get: exactly the segment's last sequence + 1.
    pub sequence: u64,
    /// Opaque payload; `None` is Go's nil slice.
    #[serde(with = "opt_bytes")]
    pub payload: Option<Bytes>,
    /// Optional metadata (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "bounded_map")]
    pub metadata: Metadata,
}

impl Record {
    /// A record with a payload and no metadata.
    pub fn new(sequence: u64, payload: impl Into<Vec<u8>>) -> Self {
        Self { sequence, payload: Some(Bytes::from(payload.into())), metadata: Metadata::new() }
    }

    /// Adds a metadata pair.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Transaction identity shared by all entries committed together (one produce chunk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Trx {
    /// Random id of the commit.
    pub id: Uuid,
    /// Node id; never set by any backend (always the nil UUID), kept for wire compatibility.
    pub node: Uuid,
    /// Per-segment commit counter: the previous commit's number + 1.
    pub number: u64,
}

/// A stored entry (server → client).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Entry {
    /// Position in the segment, 1-based.
    pub sequence: u64,
    /// Commit timestamp in Unix milliseconds (omitted when 0).
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    /// The commit this entry belongs to.
    pub trx: Trx,
    /// The payload; stored entries always have `Some` (an empty payload is `""` on the wire).
    #[serde(with = "opt_bytes")]
    pub payload: Option<Bytes>,
    /// Metadata (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub metadata: Metadata,
    /// Space of the entry.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
    /// Segment of the entry.
    #[serde(deserialize_with = "null_as_default")]
    pub segment: String,
}

impl Entry {
    /// The "nothing here" entry of an empty Peek (PROTOCOL.md §4.2): only `space` and `segment` are set.
    pub fn empty(space: impl Into<String>, segment: impl Into<String>) -> Self {
        Self { space: space.into(), segment: segment.into(), ..Self::default() }
    }

    /// Key of this entry in the space index, `DAT\0SPACES\0{space}\0{ts}\0{segment}\0{seq}` (PROTOCOL.md §5.2):
    /// the cursor a space consumer resumes after (Go `GetSpaceOffset`).
    pub fn space_offset(&self) -> LexKey {
        space_key(&self.space, self.timestamp, &self.segment, self.sequence)
    }

    /// Key of this entry in the segment index, `DAT\0SEGMENTS\0{space}\0{segment}\0{seq}` (Go
    /// `GetSegmentOffset`).
    pub fn segment_offset(&self) -> LexKey {
        segment_key(&self.space, &self.segment, self.sequence)
    }
}

/// Prefix of every data key.
pub const DATA_PREFIX: &str = "DAT";
/// Second part of space-index keys.
pub const SPACES_PART: &str = "SPACES";
/// Second part of segment-index keys.
pub const SEGMENTS_PART: &str = "SEGMENTS";

/// `DAT\0SPACES\0{space}\0{ts}\0{segment}\0{seq}`.
pub fn space_key(space: &str, timestamp: i64, segment: &str, sequence: u64) -> LexKey {
    LexKey::encode(&[
        DATA_PREFIX.into(),
        SPACES_PART.into(),
        space.into(),
        Part::I64(timestamp),
        segment.into(),
        Part::U64(sequence),
    ])
}

/// `DAT\0SEGMENTS\0{space}\0{segment}\0{seq}`.
pub fn segment_key(space: &str, segment: &str, sequence: u64) -> LexKey {
    LexKey::encode(&[
        DATA_PREFIX.into(),
        SEGMENTS_PART.into(),
        space.into(),
        segment.into(),
        Part::U64(sequence),
    ])
}

/// Head and tail of a segment; sent to producers after each commit and to subscribers.
///
/// All seven keys are always present on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SegmentStatus {
    /// Space name.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
    /// Segment name (`"*"` in wildcard heartbeats).
    #[serde(deserialize_with = "null_as_default")]
    pub segment: String,
    /// First sequence in the segment.
    pub first_sequence: u64,
    /// Timestamp of the first entry.
    pub first_timestamp: i64,
    /// Last sequence in the segment.
    pub last_sequence: u64,
    /// Timestamp of the last entry.
    pub last_timestamp: i64,
    /// True for subscription heartbeats (all numbers are then 0).
    pub heartbeat: bool,
}

impl SegmentStatus {
    /// A subscription heartbeat for `space`/`segment` (`segment` may be `"*"`).
    pub fn heartbeat(space: impl Into<String>, segment: impl Into<String>) -> Self {
        Self { space: space.into(), segment: segment.into(), heartbeat: true, ..Self::default() }
    }
}

/// A segment status published on the bus (never on a client stream).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SegmentNotification {
    /// Store the status belongs to.
    pub store_id: Uuid,
    /// The new status.
    pub segment_status: SegmentStatus,
}

/// Answer of a lease operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseResult {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// Why a request was refused (validation errors); omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_as_default")]
    pub message: String,
}

impl LeaseResult {
    /// `{"ok":true}` or `{"ok":false}`.
    pub const fn plain(ok: bool) -> Self {
        Self { ok, message: String::new() }
    }

    /// `{"ok":false,"message":...}`.
    pub fn refused(message: impl Into<String>) -> Self {
        Self { ok: false, message: message.into() }
    }
}

/// One registered worker in an inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerInfo {
    /// The worker's id.
    pub worker_id: Uuid,
    /// Metadata the worker registered with (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub metadata: Metadata,
    /// Last renewal, Unix milliseconds.
    pub last_seen_at: i64,
}

/// The live workers of a store, sorted by the raw bytes of their ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerInventory {
    /// Workers (always an array on the wire, `[]` when empty).
    #[serde(deserialize_with = "null_as_default")]
    pub workers: Vec<WorkerInfo>,
    /// When the inventory was built, Unix milliseconds.
    pub timestamp: i64,
}

/// A presence message: server heartbeats (`heartbeat: true`) and worker renewals (`heartbeat: false`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Presence {
    /// The worker concerned.
    pub worker_id: Uuid,
    /// True for server heartbeats, false for worker renewals.
    pub heartbeat: bool,
    /// Unix milliseconds.
    pub timestamp: i64,
}

/// Reserved by the Go protocol (`worker_inventory_notification`) and never sent; accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInventoryNotification {}
