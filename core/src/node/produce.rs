//! Produce (PROTOCOL.md §4.1, §5.3): records streamed in, validated against the segment head, committed in
//! chunks, acknowledged with a status per chunk, then announced on the bus.
//!
//! * A chunk is up to [`NodeConfig::produce_chunk_records`](super::NodeConfig) records (or
//!   `produce_chunk_bytes` of payload), sealed when full or when the producer half-closes. One chunk is one
//!   atomic commit, one TRX (fresh id, number = last + 1) and one timestamp, and one [`SegmentStatus`].
//! * Every record must carry exactly the next sequence: `sequence gap: expected X, got Y` otherwise, and
//!   the unfinished chunk is discarded (earlier chunks stay committed).
//! * The commit is guarded by a precondition on the segment head, so a concurrent writer (another node, or
//!   a racing produce) makes it fail instead of overwriting; the head is then re-read and the chunk either
//!   re-validated (it still follows the head) or refused with the sequence error. Within one node the
//!   commits of a segment are also serialised by a lock, so racing producers rarely waste a commit.
//! * The chunk's timestamp is taken when its commit is issued, and a space watermark fence covers the
//!   commit; after the commit the status goes to the producer, then (with a bus) the notification waits
//!   until it is visible with respect to earlier writes of the space and is published, unless the node's
//!   notification circuit breaker ([`super::circuit`]) is open, which fails the produce instead.
//! * Once the producer has ended its records and the last status is sent, the stream ends at once: the
//!   last notification is published afterwards, the operation living on without its stream until it is
//!   (Go ends the stream after the publish). Only while the publish cannot fail the produce: when the
//!   circuit is open, or one more failure would open it, the stream waits for the publish so that the
//!   producer is told, as in Go. (Several publishes in flight at once can still open the circuit
//!   together; a producer whose stream has ended is then not told, its data being committed and
//!   acknowledged.)
//! * A record stream that ends with an error commits nothing of its unfinished chunk.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::io_queue::Owner;
use super::watermark::Token;
use super::{Services, Step, StreamOp, Wait, segment_notification_route};
use crate::api::{Produce, Record, SegmentNotification, SegmentStatus, Trx};
use crate::storage::encoding::{SegmentHead, encode_entry};
use crate::storage::{CommitOutcome, Precondition, StorageOp, StorageResult, WriteBatch, keys};
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::wire::Message;

const TAG_HEAD: u32 = 1;
const TAG_COMMIT: u32 = 2;
const TAG_LOCK: u32 = 3;
const TAG_VISIBLE: u32 = 4;
const TAG_PUBLISH: u32 = 5;
const TAG_CLOCK: u32 = 6;

/// Why a produce gives up when other instances keep advancing the space clock first.
pub const CLOCK_CONTENTION: &str = "space clock contention: too many concurrent commits in this space";

/// Identifies a segment within a store.
pub(crate) type SegmentKey = (String, String);

/// Known heads of recently written segments (`None` = known to be empty), bounded.
#[derive(Debug)]
pub(crate) struct HeadCache {
    map: BTreeMap<SegmentKey, Option<SegmentHead>>,
    capacity: usize,
}

impl HeadCache {
    pub fn new(capacity: usize) -> Self {
        Self { map: BTreeMap::new(), capacity }
    }

    pub fn get(&self, key: &SegmentKey) -> Option<Option<SegmentHead>> {
        self.map.get(key).copied()
    }

    pub fn put(&mut self, key: SegmentKey, head: Option<SegmentHead>) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            // Any victim will do: a miss only costs one storage read.
            self.map.pop_first();
        }
        self.map.insert(key, head);
    }
}

/// Known values of shared space clocks (`None` = no commit yet), bounded; see
/// [`NodeConfig::shared_space_clock`](super::NodeConfig::shared_space_clock).
#[derive(Debug)]
pub(crate) struct ClockCache {
    map: BTreeMap<String, Option<i64>>,
    capacity: usize,
}

impl ClockCache {
    pub fn new(capacity: usize) -> Self {
        Self { map: BTreeMap::new(), capacity }
    }

    pub fn get(&self, space: &str) -> Option<Option<i64>> {
        self.map.get(space).copied()
    }

    pub fn put(&mut self, space: &str, clock: Option<i64>) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(space) {
            self.map.pop_first();
        }
        self.map.insert(space.into(), clock);
    }

    pub fn forget(&mut self, space: &str) {
        self.map.remove(space);
    }
}

fn decode_clock(value: Option<&[u8]>) -> Result<Option<i64>, String> {
    match value {
        None => Ok(None),
        Some(bytes) => match <[u8; 8]>::try_from(bytes) {
            Ok(raw) => Ok(Some(i64::from_le_bytes(raw))),
            Err(_) => Err("corrupt stored value: bad space clock".into()),
        },
    }
}

/// Serialises the commits of each segment within a node: the front of a queue holds the lock.
#[derive(Debug, Default)]
pub(crate) struct SegmentLocks {
    queues: BTreeMap<SegmentKey, VecDeque<StreamId>>,
}

impl SegmentLocks {
    /// Takes the lock, or queues for it; true when held now.
    pub fn acquire(&mut self, key: &SegmentKey, stream: StreamId) -> bool {
        let queue = self.queues.entry(key.clone()).or_default();
        if !queue.contains(&stream) {
            queue.push_back(stream);
        }
        queue.front() == Some(&stream)
    }

    /// Gives the lock (or a queued claim) up; returns the new holder, to be woken.
    pub fn release(&mut self, key: &SegmentKey, stream: StreamId) -> Option<StreamId> {
        let queue = self.queues.get_mut(key)?;
        let was_holder = queue.front() == Some(&stream);
        queue.retain(|s| *s != stream);
        let next = if was_holder { queue.front().copied() } else { None };
        if queue.is_empty() {
            self.queues.remove(key);
        }
        next
    }
}

#[derive(Debug, Default)]
struct Chunk {
    records: Vec<Record>,
    /// Payload and metadata bytes (the chunk size limit).
    bytes: usize,
    /// Payload bytes alone (what the produced-bytes metric counts).
    payload_bytes: u64,
    /// [`Message::footprint`] of the records: what the chunk holds of its connection's memory budget,
    /// released once the chunk is committed.
    footprint: usize,
}

impl Chunk {
    fn push(&mut self, record: Record) {
        let payload = record.payload.as_ref().map_or(0, |p| p.len());
        self.payload_bytes += payload as u64;
        self.bytes += payload + record.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.footprint += crate::wire::record_footprint(&record);
        self.records.push(record);
    }
    fn first(&self) -> u64 {
        self.records.first().map_or(0, |r| r.sequence)
    }
    fn last(&self) -> u64 {
        self.records.last().map_or(0, |r| r.sequence)
    }
}

#[derive(Debug)]
enum Phase {
    /// Nothing in flight.
    Idle,
    /// Reading the segment head before the first record can be validated.
    LoadingHead,
    /// A chunk waits for the segment lock (the space lock with a shared space clock).
    WaitingLock { retries: u32 },
    /// Reading the shared space clock before committing.
    LoadingClock { retries: u32, clock_retries: u32 },
    /// A chunk commit is in flight.
    Committing { token: Token, ts: i64, new_head: SegmentHead, retries: u32, clock_retries: u32 },
    /// The commit conflicted; the head is being re-read.
    Refreshing { retries: u32 },
    /// The status was sent; the notification waits to become visible.
    Notifying { token: Token, status: SegmentStatus },
    /// The notification is being published.
    Publishing { token: Token },
}

#[derive(Debug, PartialEq, Eq)]
enum Input {
    Open,
    Finished,
    Failed,
}

pub(crate) struct ProduceOp {
    key: SegmentKey,
    /// The committed head this op validates against; `None` until known.
    head: Option<Option<SegmentHead>>,
    /// Whether `head` was read from storage by this op (a cached head may be stale when other server
    /// instances write the same store).
    head_fresh: bool,
    /// A record that failed validation against a cached head, kept while the head is re-read.
    revalidating: Option<Record>,
    /// Sequence the next record must carry.
    next_seq: u64,
    building: Chunk,
    sealed: Option<Chunk>,
    committing: Option<Chunk>,
    phase: Phase,
    input: Input,
    failure: Option<String>,
    detached: bool,
    /// The connection is over its memory budget: seal the building chunk now instead of when full.
    flush: bool,
    /// A quota refused a record: what was accepted before is committed, then the stream closes with
    /// this text.
    stopped: Option<String>,
    /// Bytes written by the commit in flight (for the storage quota).
    committing_bytes: u64,
}

impl ProduceOp {
    pub fn start(sv: &mut Services, stream: StreamId, request: Produce) -> Option<Box<dyn StreamOp>> {
        if !keys::is_valid_name(&request.space) || !keys::is_valid_name(&request.segment) {
            sv.io.close(stream, Some("invalid produce args".into()));
            return None;
        }
        let key = (request.space, request.segment);
        let mut op = Self {
            head: None,
            head_fresh: false,
            revalidating: None,
            next_seq: 0,
            building: Chunk::default(),
            sealed: None,
            committing: None,
            phase: Phase::Idle,
            input: Input::Open,
            failure: None,
            detached: false,
            flush: false,
            stopped: None,
            committing_bytes: 0,
            key,
        };
        match sv.heads.get(&op.key) {
            Some(head) => op.set_head(head),
            None => {
                op.phase = Phase::LoadingHead;
                op.read_head(sv, stream);
            }
        }
        Some(Box::new(op))
    }

    fn read_head(&self, sv: &mut Services, stream: StreamId) {
        let key = keys::segment_status(&self.key.0, &self.key.1);
        sv.io.storage(Owner::Stream(stream, TAG_HEAD), StorageOp::Get { key });
    }

    fn set_head(&mut self, head: Option<SegmentHead>) {
        self.head = Some(head);
        self.next_seq = head.map_or(0, |h| h.last_sequence) + 1;
    }

    fn known_head(&self) -> Option<SegmentHead> {
        self.head.flatten()
    }

    fn building_full(&self, sv: &Services) -> bool {
        self.building.records.len() >= sv.config.produce_chunk_records
            || self.building.bytes >= sv.config.produce_chunk_bytes
    }

    /// Records the first failure and drops the unfinished chunk; complete chunks already sealed are still
    /// committed (Go commits each chunk before reading the next), then the stream closes with the error.
    fn fail(&mut self, error: String) {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
        self.building = Chunk::default();
    }

    /// Moves work forward after any event; closes the stream when everything is done.
    fn pump(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        if !matches!(self.phase, Phase::Idle) {
            self.end_before_publish(sv, stream);
            return Step::Continue;
        }
        if self.detached && self.committing.is_none() {
            return self.finish(sv, stream);
        }
        if self.head.is_none() {
            return if self.failure.is_some() { self.finish(sv, stream) } else { Step::Continue };
        }
        if self.failure.is_none()
            && self.sealed.is_none()
            && !self.building.records.is_empty()
            && (self.building_full(sv) || self.input != Input::Open || self.flush)
        {
            let was_full = self.building_full(sv);
            self.flush = false;
            self.sealed = Some(core::mem::take(&mut self.building));
            if was_full && self.input == Input::Open {
                sv.io.ready(stream);
            }
        }
        if self.committing.is_none() {
            if let Some(chunk) = self.sealed.take() {
                self.committing = Some(chunk);
                return self.lock_and_commit(sv, stream, 0);
            }
            if self.input != Input::Open || self.failure.is_some() {
                return self.finish(sv, stream);
            }
        }
        Step::Continue
    }

    /// What commits serialise on within the node: the segment, or the whole space when its clock is shared
    /// (valid names are never empty, so `(space, "")` is no segment's key).
    fn lock_key(&self, sv: &Services) -> SegmentKey {
        if sv.config.shared_space_clock { (self.key.0.clone(), String::new()) } else { self.key.clone() }
    }

    /// Ends the stream while the last chunk's notification is still to be published: every record was
    /// committed and acknowledged, and the publish cannot fail the produce (see the module docs).
    /// The node then detaches the operation ([`StreamOp::on_abort`]), which finishes the publish.
    fn end_before_publish(&mut self, sv: &mut Services, stream: StreamId) {
        let publishing = matches!(self.phase, Phase::Notifying { .. } | Phase::Publishing { .. });
        if publishing
            && self.input == Input::Finished
            && self.failure.is_none()
            && self.stopped.is_none()
            && self.building.records.is_empty()
            && self.sealed.is_none()
            && self.committing.is_none()
            && !sv.notify.could_fail_next(sv.now, sv.config.notify_failure_threshold)
        {
            sv.io.close(stream, None);
        }
    }

    fn finish(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        let lock = self.lock_key(sv);
        sv.locks.release(&lock, stream);
        let error = self.failure.take().or_else(|| self.stopped.take());
        sv.io.close(stream, error.map(EndReason::from));
        Step::Done
    }

    fn lock_and_commit(&mut self, sv: &mut Services, stream: StreamId, retries: u32) -> Step {
        let lock = self.lock_key(sv);
        if sv.locks.acquire(&lock, stream) {
            self.commit(sv, stream, retries, 0);
        } else {
            self.phase = Phase::WaitingLock { retries };
        }
        Step::Continue
    }

    fn release_lock(&self, sv: &mut Services, stream: StreamId) {
        let lock = self.lock_key(sv);
        if let Some(next) = sv.locks.release(&lock, stream) {
            sv.io.timer(Owner::Stream(next, TAG_LOCK), sv.now, "segment lock handed over");
        }
    }

    fn commit(&mut self, sv: &mut Services, stream: StreamId, retries: u32, clock_retries: u32) {
        let Some(chunk) = &self.committing else { return };
        let (space, segment) = (&self.key.0, &self.key.1);
        let clock = if sv.config.shared_space_clock {
            match sv.clocks.get(space) {
                Some(clock) => Some(clock),
                None => {
                    let key = keys::space_clock(space);
                    sv.io.storage(Owner::Stream(stream, TAG_CLOCK), StorageOp::Get { key });
                    self.phase = Phase::LoadingClock { retries, clock_retries };
                    return;
                }
            }
        } else {
            None
        };
        let before = self.known_head();
        // Timestamps never go backwards within a segment, so its space-index order matches its sequence
        // order; with a shared clock they strictly increase within the space.
        let mut ts = before.map_or(i64::MIN, |h| h.last_timestamp).max(sv.wall.as_timestamp());
        if let Some(Some(last)) = clock {
            ts = ts.max(last.saturating_add(1));
        }
        let trx = Trx {
            id: sv.rng.uuid_v4(),
            node: uuid::Uuid::nil(),
            number: before.map_or(0, |h| h.last_trx_number) + 1,
        };
        let new_head = SegmentHead {
            first_sequence: before.map_or_else(|| chunk.first(), |h| h.first_sequence),
            first_timestamp: before.map_or(ts, |h| h.first_timestamp),
            last_sequence: chunk.last(),
            last_timestamp: ts,
            last_trx_number: trx.number,
        };
        let status_key = keys::segment_status(space, segment);
        let mut batch = WriteBatch {
            preconditions: alloc::vec![match before {
                None => Precondition::Absent { key: status_key.clone() },
                Some(h) => Precondition::Equals { key: status_key.clone(), value: h.encode() },
            }],
            puts: Vec::with_capacity(chunk.records.len() * 2 + 3),
            deletes: Vec::new(),
        };
        for record in &chunk.records {
            let mut value = Vec::new();
            let payload = record.payload.as_deref().unwrap_or(&[]);
            encode_entry(&mut value, record.sequence, ts, &trx, payload, &record.metadata);
            batch.puts.push((keys::space_entry(space, ts, segment, record.sequence), value.clone()));
            batch.puts.push((keys::segment_entry(space, segment, record.sequence), value));
        }
        if before.is_none() {
            batch.puts.push((keys::space_inventory(space), space.as_bytes().to_vec()));
            batch.puts.push((keys::segment_inventory(space, segment), segment.as_bytes().to_vec()));
        }
        batch.puts.push((status_key, new_head.encode()));
        if let Some(clock) = clock {
            // Precondition index 1: the space clock still holds what this commit was ordered after.
            let key = keys::space_clock(space);
            batch.preconditions.push(match clock {
                None => Precondition::Absent { key: key.clone() },
                Some(last) => Precondition::Equals { key: key.clone(), value: last.to_le_bytes().to_vec() },
            });
            batch.puts.push((key, ts.to_le_bytes().to_vec()));
        }
        let token = sv.watermarks.begin(space, ts);
        self.committing_bytes = batch.byte_size() as u64;
        sv.io.storage(Owner::Stream(stream, TAG_COMMIT), StorageOp::Commit(batch));
        self.phase = Phase::Committing { token, ts, new_head, retries, clock_retries };
    }

    fn on_committed(
        &mut self,
        sv: &mut Services,
        stream: StreamId,
        token: Token,
        ts: i64,
        new_head: SegmentHead,
    ) {
        sv.watermarks.note_committed(token, ts);
        self.head = Some(Some(new_head));
        sv.heads.put(self.key.clone(), Some(new_head));
        if sv.config.shared_space_clock {
            sv.clocks.put(&self.key.0, Some(ts));
        }
        self.release_lock(sv, stream);
        sv.quotas.committed(self.committing_bytes);
        if let Some(chunk) = self.committing.take() {
            sv.io.release_input(stream, chunk.footprint as u64);
            sv.io.produced(chunk.records.len() as u64, chunk.payload_bytes);
        }
        let status = new_head.status(&self.key.0, &self.key.1);
        sv.io.send(stream, Message::Status(status.clone()));
        if sv.config.bus_configured {
            sv.wait(Owner::Stream(stream, TAG_VISIBLE), Wait::Peers(token, ts));
            self.phase = Phase::Notifying { token, status };
        } else {
            sv.watermarks.end(token);
            self.phase = Phase::Idle;
        }
    }

    fn on_head(&mut self, sv: &mut Services, stream: StreamId, result: StorageResult) -> Step {
        let head = match result {
            StorageResult::Value(None) => None,
            StorageResult::Value(Some(bytes)) => match SegmentHead::decode(&bytes) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.phase = Phase::Idle;
                    self.fail(format!("{e}"));
                    return self.pump(sv, stream);
                }
            },
            StorageResult::Failed(e) => {
                self.phase = Phase::Idle;
                self.fail(e.0);
                return self.pump(sv, stream);
            }
            other => {
                self.phase = Phase::Idle;
                self.fail(format!("unexpected storage result: {other:?}"));
                return self.pump(sv, stream);
            }
        };
        sv.heads.put(self.key.clone(), head);
        match core::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::LoadingHead => {
                self.set_head(head);
                self.head_fresh = true;
                if let Some(record) = self.revalidating.take() {
                    // Input stopped while the head was re-read: once the held record is taken, the
                    // stream must be told it accepts input again, or its queued records (and its end)
                    // are never delivered.
                    let step = self.accept(sv, stream, record);
                    if step == Step::Continue && self.accepts_input() {
                        sv.io.ready(stream);
                    }
                    return step;
                }
                sv.io.ready(stream);
            }
            Phase::Refreshing { retries } => {
                self.head = Some(head);
                self.head_fresh = true;
                let expected = head.map_or(0, |h| h.last_sequence) + 1;
                let first = self.committing.as_ref().map_or(0, Chunk::first);
                if self.detached {
                    self.committing = None;
                } else if first == expected && retries < sv.config.produce_commit_retries {
                    return self.lock_and_commit(sv, stream, retries + 1);
                } else {
                    self.committing = None;
                    self.sealed = None;
                    self.fail(format!("sequence gap: expected {expected}, got {first}"));
                }
            }
            other => self.phase = other,
        }
        self.pump(sv, stream)
    }
}

impl ProduceOp {
    /// Validates and takes one record.
    fn accept(&mut self, sv: &mut Services, stream: StreamId, record: Record) -> Step {
        if record.sequence != self.next_seq {
            let nothing_pending =
                self.building.records.is_empty() && self.sealed.is_none() && self.committing.is_none();
            if !self.head_fresh && nothing_pending && matches!(self.phase, Phase::Idle) {
                // The head came from the cache; another instance may have appended since. Re-read it
                // before refusing.
                self.revalidating = Some(record);
                self.phase = Phase::LoadingHead;
                self.read_head(sv, stream);
                return Step::Continue;
            }
            let error = format!("sequence gap: expected {}, got {}", self.next_seq, record.sequence);
            self.fail(error);
            return self.pump(sv, stream);
        }
        self.next_seq += 1;
        self.building.push(record);
        self.pump(sv, stream)
    }
}

impl StreamOp for ProduceOp {
    fn holds_input(&self) -> bool {
        true
    }

    fn on_pressure(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.flush = true;
        self.pump(sv, stream)
    }

    fn accepts_input(&self) -> bool {
        self.head.is_some()
            && self.revalidating.is_none()
            && self.input == Input::Open
            && self.failure.is_none()
            && !self.detached
            && (self.sealed.is_none() || self.building.records.is_empty())
    }

    fn on_message(&mut self, sv: &mut Services, stream: StreamId, message: Message) -> Step {
        if !self.accepts_input() {
            return Step::Continue;
        }
        let Message::Record(record) = message else {
            self.fail(format!("invalid produce message: expected a record, got {:?}", message.kind()));
            return self.pump(sv, stream);
        };
        if let Err(refused) = sv.config.limits.check_record(&record) {
            sv.io.refused(super::Refusal::Limit(refused.kind));
            self.fail(refused.message);
            return self.pump(sv, stream);
        }
        let payload = record.payload.as_ref().map_or(0, |p| p.len()) as u64;
        if let Err(refused) = sv.quotas.admit(payload, sv.now) {
            // What the producer sent before is within its quota: commit it, then refuse.
            sv.io.refused(refused.refusal);
            self.stopped = Some(refused.message);
            self.input = Input::Finished;
            return self.pump(sv, stream);
        }
        self.accept(sv, stream, record)
    }

    fn on_end(&mut self, sv: &mut Services, stream: StreamId, end: StreamEnd) -> Step {
        if self.input != Input::Open {
            return Step::Continue;
        }
        match end {
            StreamEnd::Finished => self.input = Input::Finished,
            StreamEnd::Failed(_) => {
                // The producer's source failed: its unfinished chunk is not committed.
                self.input = Input::Failed;
                self.building = Chunk::default();
            }
        }
        self.pump(sv, stream)
    }

    fn on_storage(&mut self, sv: &mut Services, stream: StreamId, tag: u32, result: StorageResult) -> Step {
        match tag {
            TAG_HEAD => self.on_head(sv, stream, result),
            TAG_CLOCK => {
                let Phase::LoadingClock { retries, clock_retries } =
                    core::mem::replace(&mut self.phase, Phase::Idle)
                else {
                    return self.pump(sv, stream);
                };
                let clock = match result {
                    StorageResult::Value(value) => decode_clock(value.as_deref()),
                    StorageResult::Failed(e) => Err(e.0),
                    other => Err(format!("unexpected storage result: {other:?}")),
                };
                match clock {
                    Ok(clock) if !self.detached => {
                        sv.clocks.put(&self.key.0, clock);
                        self.commit(sv, stream, retries, clock_retries);
                        return Step::Continue;
                    }
                    Ok(_) => {
                        self.release_lock(sv, stream);
                        self.committing = None;
                    }
                    Err(e) => {
                        self.release_lock(sv, stream);
                        self.committing = None;
                        self.sealed = None;
                        self.fail(e);
                    }
                }
                self.pump(sv, stream)
            }
            TAG_COMMIT => {
                let Phase::Committing { token, ts, new_head, retries, clock_retries } =
                    core::mem::replace(&mut self.phase, Phase::Idle)
                else {
                    return self.pump(sv, stream);
                };
                match result {
                    StorageResult::Commit(CommitOutcome::Committed) => {
                        self.on_committed(sv, stream, token, ts, new_head);
                    }
                    StorageResult::Commit(CommitOutcome::Conflict { index: 1 }) => {
                        // Another instance committed in the space first: order this chunk after it.
                        sv.watermarks.end(token);
                        sv.clocks.forget(&self.key.0);
                        if self.detached {
                            self.release_lock(sv, stream);
                            self.committing = None;
                        } else if clock_retries < sv.config.space_clock_retries {
                            self.commit(sv, stream, retries, clock_retries + 1);
                            return Step::Continue;
                        } else {
                            self.release_lock(sv, stream);
                            self.committing = None;
                            self.sealed = None;
                            self.fail(CLOCK_CONTENTION.into());
                        }
                    }
                    StorageResult::Commit(CommitOutcome::Conflict { .. }) => {
                        sv.watermarks.end(token);
                        self.release_lock(sv, stream);
                        self.phase = Phase::Refreshing { retries };
                        self.read_head(sv, stream);
                    }
                    StorageResult::Failed(e) => {
                        sv.watermarks.end(token);
                        self.release_lock(sv, stream);
                        self.committing = None;
                        self.sealed = None;
                        self.fail(e.0);
                    }
                    other => {
                        sv.watermarks.end(token);
                        self.release_lock(sv, stream);
                        self.committing = None;
                        self.fail(format!("unexpected storage result: {other:?}"));
                    }
                }
                self.pump(sv, stream)
            }
            _ => Step::Continue,
        }
    }

    fn on_wake(&mut self, sv: &mut Services, stream: StreamId, tag: u32) -> Step {
        match (tag, core::mem::replace(&mut self.phase, Phase::Idle)) {
            (TAG_LOCK, Phase::WaitingLock { retries }) => {
                if self.detached {
                    self.release_lock(sv, stream);
                    self.committing = None;
                    return self.pump(sv, stream);
                }
                let lock = self.lock_key(sv);
                if sv.locks.acquire(&lock, stream) {
                    self.commit(sv, stream, retries, 0);
                } else {
                    self.phase = Phase::WaitingLock { retries };
                }
                Step::Continue
            }
            (TAG_VISIBLE, Phase::Notifying { token, status }) => {
                // An open circuit fails the produce before publishing; its data is committed and its status
                // was sent already (PROTOCOL.md §6.2).
                if let Err(error) = sv.notify.check(sv.now) {
                    sv.watermarks.end(token);
                    self.fail(error);
                    return self.pump(sv, stream);
                }
                let route = segment_notification_route(&sv.store_id, &self.key.0);
                let notification = SegmentNotification { store_id: sv.store_id, segment_status: status };
                sv.io.bus_publish(Owner::Stream(stream, TAG_PUBLISH), route, notification);
                self.phase = Phase::Publishing { token };
                Step::Continue
            }
            (_, phase) => {
                self.phase = phase;
                Step::Continue
            }
        }
    }

    fn on_bus(&mut self, sv: &mut Services, stream: StreamId, tag: u32, result: Result<(), String>) -> Step {
        if tag != TAG_PUBLISH {
            return Step::Continue;
        }
        match result {
            Ok(()) => sv.notify.record_success(),
            // Below the threshold a failed publish is only tolerated; the failure that opens the circuit
            // fails this produce.
            Err(bus_error) => {
                let (threshold, window) = (sv.config.notify_failure_threshold, sv.config.notify_open_window);
                if let Some(error) = sv.notify.record_failure(sv.now, threshold, window, &bus_error) {
                    self.fail(error);
                }
            }
        }
        if let Phase::Publishing { token } = core::mem::replace(&mut self.phase, Phase::Idle) {
            sv.watermarks.end(token);
        }
        self.pump(sv, stream)
    }

    fn on_abort(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.detached = true;
        self.input = Input::Failed;
        self.building = Chunk::default();
        self.sealed = None;
        match self.phase {
            // Effects in flight: finish them (the data may be committed; subscribers must hear of it).
            Phase::Committing { .. }
            | Phase::LoadingClock { .. }
            | Phase::Refreshing { .. }
            | Phase::Notifying { .. }
            | Phase::Publishing { .. } => Step::Continue,
            Phase::Idle | Phase::LoadingHead | Phase::WaitingLock { .. } => {
                self.release_lock(sv, stream);
                Step::Done
            }
        }
    }
}
