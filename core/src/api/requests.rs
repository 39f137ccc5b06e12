//! Request types of PROTOCOL.md §1.3: the first message of every logical stream, wrapped in an envelope.

use alloc::collections::BTreeMap;
use alloc::string::String;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::data::Metadata;
use crate::lexkey::LexKey;
use crate::wire::serde_helpers::{bounded_map, is_zero_i64, is_zero_u64, null_as_default};

/// Append records to a segment; the client then streams bare [`Record`](super::Record)s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Produce {
    /// Target space.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
    /// Target segment.
    #[serde(deserialize_with = "null_as_default")]
    pub segment: String,
}

/// Read the last entry of a segment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Peek {
    /// Space.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
    /// Segment.
    #[serde(deserialize_with = "null_as_default")]
    pub segment: String,
}

/// Read a segment in sequence order (PROTOCOL.md §4.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumeSegment {
    /// Space.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
    /// Segment.
    #[serde(deserialize_with = "null_as_default")]
    pub segment: String,
    /// First sequence, inclusive; 0 = from the start.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub min_sequence: u64,
    /// Only entries with `timestamp > min_timestamp`.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub min_timestamp: i64,
    /// Last sequence, inclusive; 0 = unbounded.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub max_sequence: u64,
    /// Only entries with `timestamp <= max_timestamp`; 0 = up to now.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_timestamp: i64,
    /// Maximum number of entries; 0 and `u64::MAX` = unlimited.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub limit: u64,
}

/// Read one space in timestamp order (PROTOCOL.md §4.4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumeSpace {
    /// Space.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
    /// Only entries with `timestamp > min_timestamp`.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub min_timestamp: i64,
    /// Only entries with `timestamp <= max_timestamp`; 0 = up to now.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_timestamp: i64,
    /// Resume strictly after this space key (an [`Entry::space_offset`](super::Entry::space_offset)).
    #[serde(skip_serializing_if = "LexKey::is_empty")]
    pub offset: LexKey,
    /// Maximum number of entries; 0 and `u64::MAX` = unlimited.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub limit: u64,
}

/// Read several spaces merged by timestamp (PROTOCOL.md §4.5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Consume {
    /// Only entries with `timestamp > min_timestamp`.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub min_timestamp: i64,
    /// Only entries with `timestamp <= max_timestamp`; 0 = up to now.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_timestamp: i64,
    /// Space → offset to resume after; an empty offset reads the space from the beginning.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "bounded_map")]
    pub offsets: BTreeMap<String, LexKey>,
    /// Maximum number of entries over all spaces; 0 and `u64::MAX` = unlimited.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub limit: u64,
}

/// List the spaces of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetSpaces {}

/// List the segments of a space.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetSegments {
    /// Space.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
}

/// Registered by Go but never handled by its server; answered with `invalid request msg type`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetStatus {}

/// Subscribe to segment statuses: a snapshot, then live updates (PROTOCOL.md §4.7).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscribeToSegmentStatus {
    /// Space.
    #[serde(deserialize_with = "null_as_default")]
    pub space: String,
    /// Segment name, or `"*"` for every segment of the space.
    #[serde(deserialize_with = "null_as_default")]
    pub segment: String,
    /// Server heartbeat interval; 0 = none, otherwise clamped to 1..=300.
    pub heartbeat_interval_seconds: i64,
}

/// Observe the worker inventory, or register as a worker (PROTOCOL.md §6.6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscribeWorkers {
    /// The worker's id; the nil UUID registers an observer.
    pub worker_id: Uuid,
    /// Worker metadata (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "bounded_map")]
    pub metadata: Metadata,
    /// Renewal interval; 0 = default (30 s) for workers, off for observers.
    pub heartbeat_interval_seconds: i64,
}

/// Acquire (or refresh, for the same holder) a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseAcquire {
    /// Lease key.
    #[serde(deserialize_with = "null_as_default")]
    pub key: String,
    /// Holder identity.
    #[serde(deserialize_with = "null_as_default")]
    pub holder: String,
    /// Time to live, 1..=86400 seconds.
    pub ttl_seconds: i64,
}

/// Extend a lease held by `holder`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRenew {
    /// Lease key.
    #[serde(deserialize_with = "null_as_default")]
    pub key: String,
    /// Holder identity.
    #[serde(deserialize_with = "null_as_default")]
    pub holder: String,
    /// New time to live, 1..=86400 seconds.
    pub ttl_seconds: i64,
}

/// Release a lease held by `holder`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRelease {
    /// Lease key.
    #[serde(deserialize_with = "null_as_default")]
    pub key: String,
    /// Holder identity.
    #[serde(deserialize_with = "null_as_default")]
    pub holder: String,
}
