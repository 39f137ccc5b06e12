//! Leases (PROTOCOL.md §4.9, §6.7): single-holder coordination keyed by a string, with a time to live.
//!
//! The logic is split in two so that the storage of the table can change without touching the rules:
//!
//! * [`decide`] is the whole decision: given a request, the lease currently stored for its key (if any)
//!   and the time, it says whether the request succeeds and how the stored lease changes. It is pure.
//! * [`LeaseTable`] is where leases live for this node: an in-memory map, lost when the node closes (as
//!   in Go). A cluster-wide backend would instead read the key with a storage effect, call [`decide`], and
//!   commit the [`LeaseChange`] guarded by a precondition on the value it read (so two nodes deciding
//!   concurrently cannot both win); only the operation's plumbing changes, not the rules.
//!
//! Every lease request answers one bare `LeaseResult` and then closes its stream.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::io_queue::Owner;
use super::{Services, Step, StreamOp};
use crate::api::{LeaseAcquire, LeaseRelease, LeaseRenew, LeaseResult};
use crate::storage::{CommitOutcome, Precondition, StorageOp, StorageResult, WriteBatch, keys};
use crate::stream::StreamEnd;
use crate::stream::StreamId;
use crate::time::Millis;
use crate::wire::Message;

/// Longest time to live a lease may ask for: 24 hours.
pub const MAX_LEASE_TTL_SECONDS: i64 = 86_400;
/// How often expired leases are swept out of the table by default.
pub const DEFAULT_LEASE_SWEEP_INTERVAL: Millis = Millis::from_secs(60);

const TAG_SWEEP: u32 = 1;

/// A held lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it.
    pub holder: String,
    /// When it expires, Unix milliseconds; it is valid while `now < expires_at`.
    pub expires_at: i64,
}

impl Lease {
    fn is_live(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

/// A lease request, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseRequest<'a> {
    /// Take the lease if it is free, expired, or already held by `holder` (which refreshes it).
    Acquire {
        /// The holder.
        holder: &'a str,
        /// Time to live in milliseconds.
        ttl: Millis,
    },
    /// Extend a live lease held by `holder`.
    Renew {
        /// The holder.
        holder: &'a str,
        /// New time to live in milliseconds.
        ttl: Millis,
    },
    /// Give up a lease held by `holder` (expired or not).
    Release {
        /// The holder.
        holder: &'a str,
    },
}

/// How the stored lease of a key changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// Leave it as it is.
    Keep,
    /// Store this lease.
    Set(Lease),
    /// Remove the key.
    Remove,
}

/// The rules of PROTOCOL.md §6.7: whether `request` succeeds against `current` at `now`, and the change to store.
pub fn decide(request: LeaseRequest<'_>, current: Option<&Lease>, now: i64) -> (bool, LeaseChange) {
    let lease = |holder: &str, ttl: Millis| Lease {
        holder: holder.into(),
        expires_at: now.saturating_add(ttl.as_timestamp()),
    };
    match request {
        LeaseRequest::Acquire { holder, ttl } => match current {
            Some(held) if held.holder != holder && held.is_live(now) => (false, LeaseChange::Keep),
            _ => (true, LeaseChange::Set(lease(holder, ttl))),
        },
        LeaseRequest::Renew { holder, ttl } => match current {
            Some(held) if held.holder == holder && held.is_live(now) => {
                (true, LeaseChange::Set(lease(holder, ttl)))
            }
            // An expired lease is dropped on the way (Go removes expired entries on Acquire/Renew).
            Some(held) if !held.is_live(now) => (false, LeaseChange::Remove),
            _ => (false, LeaseChange::Keep),
        },
        LeaseRequest::Release { holder } => match current {
            // No expiry check: an expired lease that was not swept yet can still be released.
            Some(held) if held.holder == holder => (true, LeaseChange::Remove),
            _ => (false, LeaseChange::Keep),
        },
    }
}

/// Checks a request's fields in Go's order; the error is the `message` of the refusal.
pub fn validate(key: &str, holder: &str, ttl_seconds: Option<i64>) -> Result<(), &'static str> {
    // Go checks `lease store not configured` first; a node always has its table, so it cannot happen here.
    if key.is_empty() {
        return Err("lease key must not be empty");
    }
    if holder.is_empty() {
        return Err("lease holder must not be empty");
    }
    match ttl_seconds {
        Some(ttl) if ttl <= 0 => Err("ttl_seconds must be positive"),
        Some(ttl) if ttl > MAX_LEASE_TTL_SECONDS => Err("ttl_seconds exceeds maximum of 86400"),
        _ => Ok(()),
    }
}

/// The node-local lease table.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<String, Lease>,
}

impl LeaseTable {
    /// Applies `request` to `key` at `now`; whether it succeeded.
    pub fn execute(&mut self, key: &str, request: LeaseRequest<'_>, now: i64) -> bool {
        let (ok, change) = decide(request, self.leases.get(key), now);
        match change {
            LeaseChange::Keep => {}
            LeaseChange::Set(lease) => {
                self.leases.insert(key.into(), lease);
            }
            LeaseChange::Remove => {
                self.leases.remove(key);
            }
        }
        ok
    }

    /// Removes every lease expired at `now`; how many.
    pub fn sweep(&mut self, now: i64) -> usize {
        let before = self.leases.len();
        self.leases.retain(|_, lease| lease.is_live(now));
        before - self.leases.len()
    }

    /// The lease stored for `key`, expired or not.
    pub fn get(&self, key: &str) -> Option<&Lease> {
        self.leases.get(key)
    }

    /// Number of stored leases (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is stored.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Whether a lease is still live at `now` (the node then holds state that closing it would lose).
    pub fn has_live(&self, now: i64) -> bool {
        self.leases.values().any(|lease| lease.is_live(now))
    }
}

/// The node's leases: the table and its sweeper.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    pub table: LeaseTable,
    sweeping: bool,
}

/// A lease request as it arrives.
pub(crate) enum LeaseCall {
    Acquire(LeaseAcquire),
    Renew(LeaseRenew),
    Release(LeaseRelease),
}

/// Starts a lease request: served at once from the node's table, or through storage when leases are
/// kept there ([`NodeConfig::leases_in_storage`](super::NodeConfig::leases_in_storage)).
pub(crate) fn start(sv: &mut Services, stream: StreamId, call: LeaseCall) -> Option<Box<dyn StreamOp>> {
    if !sv.config.leases_in_storage {
        serve(sv, stream, call);
        return None;
    }
    StoredLeaseOp::start(sv, stream, call)
}

/// Serves one lease request: validates it, applies it, answers one `LeaseResult` and closes the stream.
pub(crate) fn serve(sv: &mut Services, stream: StreamId, call: LeaseCall) {
    let (key, holder, ttl_seconds) = call.parts();
    let result = match validate(key, holder, ttl_seconds) {
        Err(message) => LeaseResult::refused(message),
        Ok(()) => {
            // Validated: 1..=86400 seconds.
            let ttl = Millis::from_secs(ttl_seconds.unwrap_or(0).unsigned_abs());
            let request = match &call {
                LeaseCall::Acquire(_) => LeaseRequest::Acquire { holder, ttl },
                LeaseCall::Renew(_) => LeaseRequest::Renew { holder, ttl },
                LeaseCall::Release(_) => LeaseRequest::Release { holder },
            };
            let ok = sv.leases.table.execute(key, request, sv.now.as_timestamp());
            arm_sweeper(sv);
            LeaseResult::plain(ok)
        }
    };
    sv.io.send(stream, Message::LeaseResult(result));
    sv.io.close(stream, None);
}

/// Keeps one sweep timer armed while the table holds leases.
fn arm_sweeper(sv: &mut Services) {
    if !sv.leases.sweeping && !sv.leases.table.is_empty() {
        sv.leases.sweeping = true;
        let at = sv.now + sv.config.lease_sweep_interval.max(Millis(1));
        sv.io.timer(Owner::Leases(TAG_SWEEP), at, "lease sweep");
    }
}

/// The sweep timer fired: drop expired leases, and re-arm while some remain.
pub(crate) fn on_sweep(sv: &mut Services) {
    sv.leases.sweeping = false;
    sv.leases.table.sweep(sv.now.as_timestamp());
    arm_sweeper(sv);
}

/// Stored form of a lease: `0x01 | expires_at i64 LE | holder bytes`.
fn encode_lease(lease: &Lease) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + lease.holder.len());
    out.push(1);
    out.extend_from_slice(&lease.expires_at.to_le_bytes());
    out.extend_from_slice(lease.holder.as_bytes());
    out
}

fn decode_lease(bytes: &[u8]) -> Option<Lease> {
    let (&version, rest) = bytes.split_first()?;
    if version != 1 || rest.len() < 8 {
        return None;
    }
    let (expires, holder) = rest.split_at(8);
    let expires_at = i64::from_le_bytes(expires.try_into().ok()?);
    let holder = core::str::from_utf8(holder).ok()?.into();
    Some(Lease { holder, expires_at })
}

const TAG_READ: u32 = 1;
const TAG_WRITE: u32 = 2;
/// Read-decide-commit rounds before a lease request gives up under contention.
const STORED_LEASE_ATTEMPTS: u32 = 16;
/// Refusal when other requests keep changing the same lease.
pub const LEASE_CONTENTION: &str = "lease contention: retry";

/// One lease request served through storage: read the lease, decide, commit the change with a
/// precondition on what was read; a conflict (another instance changed it) starts over.
pub(crate) struct StoredLeaseOp {
    key: Vec<u8>,
    call: LeaseCall,
    ttl: Millis,
    attempts: u32,
    /// The value read, when a commit of `ok` is in flight.
    pending: Option<bool>,
}

impl StoredLeaseOp {
    fn start(sv: &mut Services, stream: StreamId, call: LeaseCall) -> Option<Box<dyn StreamOp>> {
        let (key, holder, ttl_seconds) = call.parts();
        if let Err(message) = validate(key, holder, ttl_seconds) {
            sv.io.send(stream, Message::LeaseResult(LeaseResult::refused(message)));
            sv.io.close(stream, None);
            return None;
        }
        let ttl = Millis::from_secs(ttl_seconds.unwrap_or(0).unsigned_abs());
        let op = Self { key: keys::lease(key), call, ttl, attempts: 0, pending: None };
        op.read(sv, stream);
        Some(Box::new(op))
    }

    fn read(&self, sv: &mut Services, stream: StreamId) {
        sv.io.storage(Owner::Stream(stream, TAG_READ), StorageOp::Get { key: self.key.clone() });
    }

    fn answer(sv: &mut Services, stream: StreamId, result: LeaseResult) -> Step {
        sv.io.send(stream, Message::LeaseResult(result));
        sv.io.close(stream, None);
        Step::Done
    }

    fn failed(sv: &mut Services, stream: StreamId, result: StorageResult) -> Step {
        let error = match result {
            StorageResult::Failed(e) => e.0,
            other => format!("unexpected storage result: {other:?}"),
        };
        sv.io.close(stream, Some(error.into()));
        Step::Done
    }

    fn decide_and_write(&mut self, sv: &mut Services, stream: StreamId, stored: Option<Vec<u8>>) -> Step {
        let current = stored.as_deref().and_then(decode_lease);
        let (_, holder, _) = self.call.parts();
        let request = match &self.call {
            LeaseCall::Acquire(_) => LeaseRequest::Acquire { holder, ttl: self.ttl },
            LeaseCall::Renew(_) => LeaseRequest::Renew { holder, ttl: self.ttl },
            LeaseCall::Release(_) => LeaseRequest::Release { holder },
        };
        // Leases in shared storage are compared across instances: wall time.
        let (ok, change) = decide(request, current.as_ref(), sv.wall.as_timestamp());
        let precondition = match stored {
            // An unreadable value is replaced like an absent one, but only if it is still the same.
            Some(value) => Precondition::Equals { key: self.key.clone(), value },
            None => Precondition::Absent { key: self.key.clone() },
        };
        let batch = match change {
            LeaseChange::Keep => return Self::answer(sv, stream, LeaseResult::plain(ok)),
            LeaseChange::Set(lease) => WriteBatch {
                preconditions: alloc::vec![precondition],
                puts: alloc::vec![(self.key.clone(), encode_lease(&lease))],
                deletes: Vec::new(),
            },
            LeaseChange::Remove => WriteBatch {
                preconditions: alloc::vec![precondition],
                puts: Vec::new(),
                deletes: alloc::vec![self.key.clone()],
            },
        };
        self.pending = Some(ok);
        sv.io.storage(Owner::Stream(stream, TAG_WRITE), StorageOp::Commit(batch));
        Step::Continue
    }
}

impl LeaseCall {
    fn parts(&self) -> (&str, &str, Option<i64>) {
        match self {
            LeaseCall::Acquire(r) => (&r.key, &r.holder, Some(r.ttl_seconds)),
            LeaseCall::Renew(r) => (&r.key, &r.holder, Some(r.ttl_seconds)),
            LeaseCall::Release(r) => (&r.key, &r.holder, None),
        }
    }
}

impl StreamOp for StoredLeaseOp {
    fn on_end(&mut self, _sv: &mut Services, _stream: StreamId, _end: StreamEnd) -> Step {
        Step::Continue
    }

    fn on_storage(&mut self, sv: &mut Services, stream: StreamId, tag: u32, result: StorageResult) -> Step {
        match (tag, result) {
            (TAG_READ, StorageResult::Value(stored)) => self.decide_and_write(sv, stream, stored),
            (TAG_WRITE, StorageResult::Commit(CommitOutcome::Committed)) => {
                let ok = self.pending.take().unwrap_or(false);
                Self::answer(sv, stream, LeaseResult::plain(ok))
            }
            (TAG_WRITE, StorageResult::Commit(CommitOutcome::Conflict { .. })) => {
                // Another instance changed the lease between our read and our commit: decide again.
                self.pending = None;
                self.attempts += 1;
                if self.attempts >= STORED_LEASE_ATTEMPTS {
                    return Self::answer(sv, stream, LeaseResult::refused(LEASE_CONTENTION));
                }
                self.read(sv, stream);
                Step::Continue
            }
            (_, other) => Self::failed(sv, stream, other),
        }
    }

    fn on_abort(&mut self, _sv: &mut Services, _stream: StreamId) -> Step {
        // A commit in flight still lands (the lease holds or goes as decided); nothing is left to answer.
        Step::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(holder: &str, ttl_ms: u64) -> LeaseRequest<'_> {
        LeaseRequest::Acquire { holder, ttl: Millis(ttl_ms) }
    }

    #[test]
    fn acquire_renew_release_rules() {
        let mut t = LeaseTable::default();
        assert!(t.execute("k", acquire("h0", 1000), 0));
        // Same holder re-acquires (refreshing), another holder is refused while the lease lives.
        assert!(t.execute("k", acquire("h0", 1000), 500));
        assert_eq!(t.get("k").unwrap().expires_at, 1500);
        assert!(!t.execute("k", acquire("h1", 1000), 1499));
        // Renew: only the holder, only while live.
        assert!(!t.execute("k", LeaseRequest::Renew { holder: "h1", ttl: Millis(10) }, 600));
        assert!(t.execute("k", LeaseRequest::Renew { holder: "h0", ttl: Millis(1000) }, 600));
        assert_eq!(t.get("k").unwrap().expires_at, 1600);
        // Release: only the holder.
        assert!(!t.execute("k", LeaseRequest::Release { holder: "h1" }, 700));
        assert!(t.execute("k", LeaseRequest::Release { holder: "h0" }, 700));
        assert!(t.is_empty());
        assert!(!t.execute("k", LeaseRequest::Release { holder: "h0" }, 700));
    }

    #[test]
    fn expiry() {
        let mut t = LeaseTable::default();
        assert!(t.execute("k", acquire("h0", 100), 0));
        // Valid while now < expires_at.
        assert!(!t.execute("k", acquire("h1", 100), 99));
        assert!(t.execute("k", acquire("h1", 100), 100));
        assert_eq!(t.get("k").unwrap().holder, "h1");
        // An expired lease can still be released by its holder until swept.
        assert!(t.execute("k", LeaseRequest::Release { holder: "h1" }, 5000));
        // Renewing an expired lease fails and drops it.
        assert!(t.execute("k", acquire("h2", 100), 0));
        assert!(!t.execute("k", LeaseRequest::Renew { holder: "h2", ttl: Millis(100) }, 100));
        assert!(t.get("k").is_none());
    }

    #[test]
    fn sweep_removes_expired_and_keeps_live() {
        let mut t = LeaseTable::default();
        t.execute("old", acquire("a", 10), 0);
        t.execute("new", acquire("b", 1000), 0);
        assert!(t.has_live(500));
        assert_eq!(t.sweep(500), 1);
        assert!(t.get("old").is_none() && t.get("new").is_some());
        assert!(!t.has_live(1000));
    }

    #[test]
    fn validation_order_and_texts() {
        assert_eq!(validate("", "", Some(0)), Err("lease key must not be empty"));
        assert_eq!(validate("k", "", Some(0)), Err("lease holder must not be empty"));
        assert_eq!(validate("k", "h", Some(0)), Err("ttl_seconds must be positive"));
        assert_eq!(validate("k", "h", Some(-1)), Err("ttl_seconds must be positive"));
        assert_eq!(validate("k", "h", Some(86_401)), Err("ttl_seconds exceeds maximum of 86400"));
        assert_eq!(validate("k", "h", Some(86_400)), Ok(()));
        assert_eq!(validate("k", "h", None), Ok(()));
    }
}
