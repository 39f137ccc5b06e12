//! Per-store quotas: how much a store may hold, and how fast it may be written.
//!
//! Quotas are optional (none by default) and apply to each store separately: one tenant's store at its
//! quota never slows another's. A produce that would go over a quota is refused with a text of the
//! form below; what was committed before stays committed, and the records the producer sent before the
//! refusal are committed first (so a producer always makes the progress its quota allows):
//!
//! | quota | refusal |
//! |---|---|
//! | stored bytes | `store storage quota exceeded (10485760 bytes)` |
//! | records per second | `store produce rate exceeded (1000 records/s)` |
//! | payload bytes per second | `store produce rate exceeded (1048576 bytes/s)` |
//!
//! Rates are token buckets refilled continuously from the node's clock, holding one second's worth:
//! a store may write a second's quota at once, then its rate. Stored bytes are the size the store's
//! backend reports ([`StorageOp::Usage`](crate::storage::StorageOp)), measured when the node
//! opens and again every [`USAGE_REFRESH`], plus what the node committed since: a store shared by
//! several server instances may overshoot by what the others wrote since the last measurement.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use uuid::Uuid;

use super::io_queue::Owner;
use super::{Refusal, Services};
use crate::storage::{StorageOp, StorageResult};
use crate::time::Millis;

/// How often a store with a storage quota measures what it holds.
pub const USAGE_REFRESH: Millis = Millis::from_secs(60);

/// Which quota refused a produce (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaKind {
    /// [`StoreQuotas::max_stored_bytes`].
    StoredBytes,
    /// [`StoreQuotas::max_records_per_second`].
    RecordRate,
    /// [`StoreQuotas::max_bytes_per_second`].
    ByteRate,
}

impl QuotaKind {
    /// Every kind.
    pub const ALL: [QuotaKind; 3] = [QuotaKind::StoredBytes, QuotaKind::RecordRate, QuotaKind::ByteRate];

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::StoredBytes => "quota_stored_bytes",
            QuotaKind::RecordRate => "quota_record_rate",
            QuotaKind::ByteRate => "quota_byte_rate",
        }
    }
}

/// The quotas of one store; `None` is no quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreQuotas {
    /// Bytes the store may hold (keys and values, as its backend counts them).
    pub max_stored_bytes: Option<u64>,
    /// Records the store may be appended per second.
    pub max_records_per_second: Option<u64>,
    /// Payload bytes the store may be appended per second.
    pub max_bytes_per_second: Option<u64>,
}

impl StoreQuotas {
    /// Whether any quota is set.
    pub fn is_limited(&self) -> bool {
        self.max_stored_bytes.is_some()
            || self.max_records_per_second.is_some()
            || self.max_bytes_per_second.is_some()
    }
}

/// The quotas of every store: a default and per-store exceptions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaConfig {
    /// The quotas of every store without an exception.
    pub default: StoreQuotas,
    /// Stores with quotas of their own.
    pub stores: BTreeMap<Uuid, StoreQuotas>,
}

impl QuotaConfig {
    /// The quotas of `store`.
    pub fn of(&self, store: &Uuid) -> StoreQuotas {
        self.stores.get(store).copied().unwrap_or(self.default)
    }
}

/// A token bucket holding one second's worth of its rate, refilled continuously.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    tokens: u64,
    refilled_at: Millis,
}

impl Bucket {
    fn new(rate: u64, now: Millis) -> Self {
        Self { rate, tokens: rate, refilled_at: now }
    }

    fn refill(&mut self, now: Millis) {
        let elapsed = now.saturating_since(self.refilled_at).as_u64();
        let added = u128::from(self.rate) * u128::from(elapsed) / 1000;
        let tokens = u128::from(self.tokens) + added;
        if tokens >= u128::from(self.rate) {
            self.tokens = self.rate;
            self.refilled_at = now;
        } else if added > 0 {
            self.tokens = tokens as u64;
            // Only the time the whole tokens took is used up: the fraction of the next one is kept.
            let used = added * 1000 / u128::from(self.rate.max(1));
            self.refilled_at = self.refilled_at + Millis(used as u64);
        }
    }

    /// Takes `amount` tokens if the bucket holds them.
    fn take(&mut self, amount: u64, now: Millis) -> bool {
        self.refill(now);
        // A single record larger than a second's worth may go through a full bucket, or it never could
        // (a rate of 0 lets nothing through).
        if self.tokens >= amount || (self.tokens == self.rate && self.rate > 0) {
            self.tokens = self.tokens.saturating_sub(amount);
            true
        } else {
            false
        }
    }
}

/// A node's quota state.
#[derive(Debug)]
pub(crate) struct Quotas {
    limits: StoreQuotas,
    records: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Bytes stored at the last measurement plus what was committed since; `None` until measured.
    pub stored: Option<u64>,
    /// A measurement is in flight.
    pub measuring: bool,
}

/// A produce refused by a quota.
pub(crate) struct QuotaExceeded {
    pub refusal: Refusal,
    pub message: String,
}

impl Quotas {
    pub fn new(limits: StoreQuotas, now: Millis) -> Self {
        Self {
            limits,
            records: limits.max_records_per_second.map(|rate| Bucket::new(rate, now)),
            bytes: limits.max_bytes_per_second.map(|rate| Bucket::new(rate, now)),
            stored: None,
            measuring: false,
        }
    }

    /// Whether the node measures what its store holds.
    pub fn tracks_usage(&self) -> bool {
        self.limits.max_stored_bytes.is_some()
    }

    /// A measurement of the store's size arrived.
    pub fn measured(&mut self, bytes: u64) {
        self.stored = Some(bytes);
        self.measuring = false;
    }

    /// A commit wrote `bytes`.
    pub fn committed(&mut self, bytes: u64) {
        if let Some(stored) = &mut self.stored {
            *stored = stored.saturating_add(bytes);
        }
    }

    /// Whether one more record of `payload` bytes may be appended now; takes it from the rates.
    pub fn admit(&mut self, payload: u64, now: Millis) -> Result<(), QuotaExceeded> {
        if let (Some(limit), Some(stored)) = (self.limits.max_stored_bytes, self.stored)
            && stored >= limit
        {
            return Err(QuotaExceeded {
                refusal: Refusal::Quota(QuotaKind::StoredBytes),
                message: format!("store storage quota exceeded ({limit} bytes)"),
            });
        }
        if let Some(bucket) = &mut self.records
            && !bucket.take(1, now)
        {
            return Err(QuotaExceeded {
                refusal: Refusal::Quota(QuotaKind::RecordRate),
                message: format!("store produce rate exceeded ({} records/s)", bucket.rate),
            });
        }
        if let Some(bucket) = &mut self.bytes
            && !bucket.take(payload, now)
        {
            // The record was not taken: give its record token back.
            if let Some(records) = &mut self.records {
                records.tokens = records.tokens.saturating_add(1).min(records.rate);
            }
            return Err(QuotaExceeded {
                refusal: Refusal::Quota(QuotaKind::ByteRate),
                message: format!("store produce rate exceeded ({} bytes/s)", bucket.rate),
            });
        }
        Ok(())
    }
}

/// Starts the first measurement of the store's usage, when it has a storage quota.
pub(crate) fn ensure_measured(sv: &mut Services) {
    if sv.quotas.tracks_usage() && sv.quotas.stored.is_none() && !sv.quotas.measuring {
        measure(sv);
    }
}

/// Asks the backend how much the store holds.
pub(crate) fn measure(sv: &mut Services) {
    if !sv.quotas.measuring {
        sv.quotas.measuring = true;
        sv.io.storage(Owner::Quota, StorageOp::Usage);
    }
}

/// A measurement completed; the next one is due after [`USAGE_REFRESH`]. A failed one leaves the
/// last known size (none at first: the quota is not enforced until a measurement succeeds).
pub(crate) fn on_usage(sv: &mut Services, result: StorageResult) {
    match result {
        StorageResult::Usage(bytes) => sv.quotas.measured(bytes),
        _ => sv.quotas.measuring = false,
    }
    sv.io.timer(Owner::Quota, sv.now + USAGE_REFRESH, "store usage measurement");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_a_second_and_refill_with_time() {
        let mut bucket = Bucket::new(10, Millis(0));
        assert!((0..10).all(|_| bucket.take(1, Millis(0))));
        assert!(!bucket.take(1, Millis(0)), "a second's worth at once, no more");
        assert!(!bucket.take(1, Millis(99)));
        assert!(bucket.take(1, Millis(100)), "one more every 100 ms");
        assert!(!bucket.take(1, Millis(100)));
        assert!(bucket.take(10, Millis(5_000)), "never more than a second's worth");
        assert!(!bucket.take(1, Millis(5_000)));
        // A request larger than the rate passes a full bucket only.
        let mut bytes = Bucket::new(100, Millis(0));
        assert!(bytes.take(1_000, Millis(0)));
        assert!(!bytes.take(1_000, Millis(500)));
        assert!(bytes.take(1_000, Millis(1_000)));
    }

    #[test]
    fn stored_bytes_count_from_the_measurement() {
        let limits = StoreQuotas { max_stored_bytes: Some(1_000), ..StoreQuotas::default() };
        let mut quotas = Quotas::new(limits, Millis(0));
        assert!(quotas.tracks_usage());
        assert!(quotas.admit(10, Millis(0)).is_ok(), "unknown until measured");
        quotas.measured(900);
        assert!(quotas.admit(10, Millis(0)).is_ok());
        quotas.committed(100);
        let refused = quotas.admit(10, Millis(0)).expect_err("at the quota");
        assert_eq!(refused.message, "store storage quota exceeded (1000 bytes)");
        assert_eq!(refused.refusal, Refusal::Quota(QuotaKind::StoredBytes));
    }

    #[test]
    fn a_record_refused_by_the_byte_rate_keeps_its_record_token() {
        let limits = StoreQuotas {
            max_records_per_second: Some(2),
            max_bytes_per_second: Some(100),
            ..StoreQuotas::default()
        };
        let mut quotas = Quotas::new(limits, Millis(0));
        assert!(quotas.admit(100, Millis(0)).is_ok());
        let refused = quotas.admit(1, Millis(0)).expect_err("bytes exhausted");
        assert_eq!(refused.message, "store produce rate exceeded (100 bytes/s)");
        assert!(quotas.admit(0, Millis(0)).is_ok(), "the record token came back");
        let refused = quotas.admit(0, Millis(0)).expect_err("records exhausted");
        assert_eq!(refused.message, "store produce rate exceeded (2 records/s)");
        let config =
            QuotaConfig { default: limits, stores: BTreeMap::from([(Uuid::nil(), StoreQuotas::default())]) };
        assert!(!config.of(&Uuid::nil()).is_limited());
        assert!(config.of(&Uuid::from_u128(1)).is_limited());
    }
}
