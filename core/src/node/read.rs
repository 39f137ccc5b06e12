//! Reads (PROTOCOL.md §4.2–4.6): Peek, ConsumeSegment, ConsumeSpace, Consume (several spaces merged by timestamp),
//! GetSpaces and GetSegments.
//!
//! Streaming reads never hold more than one storage batch per space in memory: they read
//! [`NodeConfig::read_batch`](super::NodeConfig) entries at a time, and only while the stream has send
//! credit.
//!
//! Space cursors (ConsumeSpace, Consume) must never skip an entry that commits later (ARCHITECTURE.md invariant
//! 3). Their upper bound is therefore below every in-flight write of the space (the watermark) **and**
//! below the current millisecond: a write that starts later in the same millisecond would otherwise land
//! behind a cursor taken now. So that a read right after a produce still sees it, a read whose bound
//! reaches the current millisecond starts one millisecond later, when that millisecond is closed.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::io_queue::Owner;
use super::{MAX_CONSUME_ENTRIES, Services, Step, StreamOp};
use crate::api::{Consume, ConsumeSegment, ConsumeSpace, Entry, GetSegments, Peek};
use crate::storage::encoding::decode_entry;
use crate::storage::{ScanRange, StorageOp, StorageResult, keys};
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;

const TAG_SCAN: u32 = 1;
const TAG_START: u32 = 2;
/// Scans of the i-th space of a multi-space read carry tag `TAG_CURSOR_BASE + i` (completions may arrive in
/// any order).
const TAG_CURSOR_BASE: u32 = 100;

/// The number of entries a consume may return: 0 and `u64::MAX` mean unlimited, anything else is capped
/// at [`MAX_CONSUME_ENTRIES`].
pub(crate) fn effective_limit(limit: u64) -> u64 {
    if limit == 0 || limit == u64::MAX { u64::MAX } else { limit.min(MAX_CONSUME_ENTRIES) }
}

/// How much one scan may return: pairs and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    limit: usize,
    max_bytes: usize,
}

impl Batch {
    /// Whether a scan that returned `pairs` for this batch reached the end of its range: it stopped
    /// short of both bounds.
    fn exhausted(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> bool {
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        pairs.len() < self.limit && bytes < self.max_bytes
    }
}

fn scan(
    sv: &mut Services,
    stream: StreamId,
    tag: u32,
    start: &[u8],
    end: &[u8],
    reverse: bool,
    batch: Batch,
) {
    let range = ScanRange {
        start: start.to_vec(),
        end: end.to_vec(),
        reverse,
        limit: batch.limit,
        max_bytes: batch.max_bytes,
    };
    sv.io.storage(Owner::Stream(stream, tag), StorageOp::Scan(range));
}

/// The key just after `key` in byte order: where the next scan resumes.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

fn storage_error(result: StorageResult) -> String {
    match result {
        StorageResult::Failed(e) => e.0,
        other => format!("unexpected storage result: {other:?}"),
    }
}

/// The batch the stream's credit allows, its byte credit shared by `shares` readers (at least one
/// entry, so progress is possible): a scan never reads much more than the stream may send.
fn credit_batch(sv: &Services, stream: &StreamId, remaining: u64, shares: usize) -> Batch {
    let credit = sv.io.credit(stream).max(1) as u64;
    let limit =
        sv.config.read_batch.max(1).min(credit as usize).min(remaining.min(usize::MAX as u64) as usize);
    let bytes = usize::try_from(sv.io.byte_credit(stream).max(1)).unwrap_or(usize::MAX);
    Batch { limit, max_bytes: (bytes / shares.max(1)).max(1) }
}

/// The peer ended its side of a read. A clean `mux::close` is only a half-close (the peer still reads
/// the answers); an end with an error means it gave up (a cancelled consume sends `mux::close` with
/// `context canceled`) and has forgotten the channel: the read stops at once and the stream is released,
/// instead of reading and sending the rest of the range to nobody while holding a stream slot.
fn peer_end(sv: &mut Services, stream: StreamId, end: StreamEnd) -> Step {
    match end {
        StreamEnd::Finished => Step::Continue,
        StreamEnd::Failed(_) => {
            sv.io.close(stream, Some(EndReason::Canceled));
            Step::Done
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Peek

/// Peek: the last entry of a segment, or the empty entry (PROTOCOL.md §4.2).
pub(crate) struct PeekOp {
    space: String,
    segment: String,
}

impl PeekOp {
    pub fn start(sv: &mut Services, stream: StreamId, request: Peek) -> Option<Box<dyn StreamOp>> {
        if !keys::is_valid_name(&request.space) || !keys::is_valid_name(&request.segment) {
            sv.io.send(stream, Message::Entry(Entry::empty(request.space, request.segment)));
            sv.io.close(stream, None);
            return None;
        }
        let (start, end) = keys::segment_range(&request.space, &request.segment, 0, u64::MAX);
        scan(sv, stream, TAG_SCAN, &start, &end, true, Batch { limit: 1, max_bytes: usize::MAX });
        Some(Box::new(Self { space: request.space, segment: request.segment }))
    }
}

impl StreamOp for PeekOp {
    fn on_end(&mut self, sv: &mut Services, stream: StreamId, end: StreamEnd) -> Step {
        peer_end(sv, stream, end)
    }

    fn on_storage(&mut self, sv: &mut Services, stream: StreamId, _tag: u32, result: StorageResult) -> Step {
        let entry = match result {
            StorageResult::Pairs(pairs) => match pairs.into_iter().next() {
                None => Entry::empty(&*self.space, &*self.segment),
                Some((_, value)) => match decode_entry(value.into(), &self.space, &self.segment) {
                    // An entry above the watermark (an earlier write of the space is still in flight) is
                    // hidden, as in Go; Publish retries.
                    Ok(entry) if sv.watermarks.is_visible(&self.space, entry.timestamp) => entry,
                    Ok(_) => Entry::empty(&*self.space, &*self.segment),
                    Err(e) => {
                        sv.io.close(stream, Some(format!("{e}").into()));
                        return Step::Done;
                    }
                },
            },
            other => {
                sv.io.close(stream, Some(storage_error(other).into()));
                return Step::Done;
            }
        };
        sv.io.send(stream, Message::Entry(entry));
        sv.io.close(stream, None);
        Step::Done
    }

    fn on_abort(&mut self, _sv: &mut Services, _stream: StreamId) -> Step {
        Step::Done
    }
}

// ---------------------------------------------------------------------------------------------------
// ConsumeSegment

/// ConsumeSegment: a segment in sequence order with inclusive sequence bounds and `(min_ts, max_ts]`.
pub(crate) struct ConsumeSegmentOp {
    space: String,
    segment: String,
    next: Vec<u8>,
    end: Vec<u8>,
    min_ts: i64,
    max_ts: i64,
    remaining: u64,
    requested: Option<Batch>,
}

impl ConsumeSegmentOp {
    pub fn start(sv: &mut Services, stream: StreamId, request: ConsumeSegment) -> Option<Box<dyn StreamOp>> {
        if !keys::is_valid_name(&request.space) || !keys::is_valid_name(&request.segment) {
            sv.io.close(stream, None);
            return None;
        }
        let min_seq = request.min_sequence;
        let max_seq = match request.max_sequence {
            0 => u64::MAX,
            max => max.max(min_seq),
        };
        let visible = sv.visible_max(&request.space);
        let max_ts = if request.max_timestamp == 0 || request.max_timestamp > visible {
            visible
        } else {
            request.max_timestamp
        };
        let min_ts = request.min_timestamp.min(sv.wall.as_timestamp());
        let (next, end) = keys::segment_range(&request.space, &request.segment, min_seq, max_seq);
        let mut op = Self {
            space: request.space,
            segment: request.segment,
            next,
            end,
            min_ts,
            max_ts,
            remaining: effective_limit(request.limit),
            requested: None,
        };
        match op.pump(sv, stream) {
            Step::Done => None,
            Step::Continue => Some(Box::new(op)),
        }
    }

    fn pump(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        if self.requested.is_some() {
            return Step::Continue;
        }
        if self.remaining == 0 {
            sv.io.close(stream, None);
            return Step::Done;
        }
        if sv.io.credit(&stream) <= 0 {
            return Step::Continue;
        }
        let batch = credit_batch(sv, &stream, self.remaining, 1);
        scan(sv, stream, TAG_SCAN, &self.next, &self.end, false, batch);
        self.requested = Some(batch);
        Step::Continue
    }
}

impl StreamOp for ConsumeSegmentOp {
    fn on_end(&mut self, sv: &mut Services, stream: StreamId, end: StreamEnd) -> Step {
        peer_end(sv, stream, end)
    }

    fn on_storage(&mut self, sv: &mut Services, stream: StreamId, _tag: u32, result: StorageResult) -> Step {
        let Some(requested) = self.requested.take() else { return Step::Continue };
        let StorageResult::Pairs(pairs) = result else {
            sv.io.close(stream, Some(storage_error(result).into()));
            return Step::Done;
        };
        let exhausted = requested.exhausted(&pairs);
        if let Some((last, _)) = pairs.last() {
            self.next = successor(last);
        }
        for (_, value) in pairs {
            let entry = match decode_entry(value.into(), &self.space, &self.segment) {
                Ok(entry) => entry,
                Err(e) => {
                    sv.io.close(stream, Some(format!("{e}").into()));
                    return Step::Done;
                }
            };
            // Timestamps never decrease along a segment, so the first entry past the bound ends the read.
            if entry.timestamp > self.max_ts {
                sv.io.close(stream, None);
                return Step::Done;
            }
            if entry.timestamp <= self.min_ts {
                continue;
            }
            sv.io.send(stream, Message::Entry(entry));
            self.remaining -= 1;
            if self.remaining == 0 {
                break;
            }
        }
        if exhausted {
            self.remaining = 0;
        }
        self.pump(sv, stream)
    }

    fn on_credit(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.pump(sv, stream)
    }

    fn on_abort(&mut self, _sv: &mut Services, _stream: StreamId) -> Step {
        Step::Done
    }
}

// ---------------------------------------------------------------------------------------------------
// ConsumeSpace and Consume

struct SpaceCursor {
    space: String,
    offset: Option<Vec<u8>>,
    prefix_len: usize,
    next: Vec<u8>,
    end: Vec<u8>,
    buffer: VecDeque<Entry>,
    exhausted: bool,
    requested: Option<Batch>,
}

/// ConsumeSpace and Consume: one or more spaces, each in space-key order, merged by timestamp.
pub(crate) struct ConsumeSpacesOp {
    cursors: Vec<SpaceCursor>,
    min_ts: i64,
    /// Requested upper bound; 0 = up to now.
    max_ts: i64,
    remaining: u64,
    started: bool,
}

impl ConsumeSpacesOp {
    pub fn start_space(
        sv: &mut Services,
        stream: StreamId,
        request: ConsumeSpace,
    ) -> Option<Box<dyn StreamOp>> {
        let offset = (!request.offset.is_empty()).then_some(request.offset.0);
        let spaces = alloc::vec![(request.space, offset)];
        Self::start(sv, stream, spaces, request.min_timestamp, request.max_timestamp, request.limit)
    }

    pub fn start_multi(sv: &mut Services, stream: StreamId, request: Consume) -> Option<Box<dyn StreamOp>> {
        let spaces = request
            .offsets
            .into_iter()
            .map(|(space, offset)| (space, (!offset.is_empty()).then_some(offset.0)));
        Self::start(sv, stream, spaces.collect(), request.min_timestamp, request.max_timestamp, request.limit)
    }

    fn start(
        sv: &mut Services,
        stream: StreamId,
        spaces: Vec<(String, Option<Vec<u8>>)>,
        min_ts: i64,
        max_ts: i64,
        limit: u64,
    ) -> Option<Box<dyn StreamOp>> {
        let cursors: Vec<SpaceCursor> = spaces
            .into_iter()
            .filter(|(space, _)| keys::is_valid_name(space))
            .map(|(space, offset)| SpaceCursor {
                prefix_len: keys::space_prefix(&space).len(),
                space,
                offset,
                next: Vec::new(),
                end: Vec::new(),
                buffer: VecDeque::new(),
                exhausted: false,
                requested: None,
            })
            .collect();
        if cursors.is_empty() {
            sv.io.close(stream, None);
            return None;
        }
        let now = sv.wall.as_timestamp();
        let mut op = Self {
            cursors,
            min_ts: min_ts.min(now),
            max_ts,
            remaining: effective_limit(limit),
            started: false,
        };
        if max_ts == 0 || max_ts >= now {
            // The bound reaches the current millisecond: start once it is over (see the module docs).
            sv.io.timer(
                Owner::Stream(stream, TAG_START),
                sv.now + Millis(1),
                "space read waits for the millisecond to close",
            );
            Some(Box::new(op))
        } else {
            match op.begin(sv, stream) {
                Step::Done => None,
                Step::Continue => Some(Box::new(op)),
            }
        }
    }

    /// Fixes each space's upper bound and starts reading.
    fn begin(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.started = true;
        let before_now = sv.wall.as_timestamp().saturating_sub(1);
        for cursor in &mut self.cursors {
            let mut bound = sv.watermarks.safe_max(&cursor.space).map_or(before_now, |m| m.min(before_now));
            if self.max_ts != 0 {
                bound = bound.min(self.max_ts);
            }
            let (start, end) = keys::space_range(&cursor.space, cursor.offset.as_deref(), self.min_ts, bound);
            cursor.exhausted = start >= end;
            cursor.next = start;
            cursor.end = end;
        }
        self.pump(sv, stream)
    }

    /// One cursor's share of a refill: of the read batch (at least 8 entries) and of the byte credit.
    fn batch(&self, sv: &Services, stream: &StreamId) -> Batch {
        let cursors = self.cursors.len().max(1);
        let limit = (sv.config.read_batch / cursors).clamp(8, sv.config.read_batch.max(8));
        Batch { limit, ..credit_batch(sv, stream, u64::MAX, cursors) }
    }

    fn pump(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        if !self.started {
            return Step::Continue;
        }
        loop {
            if self.remaining == 0 {
                sv.io.close(stream, None);
                return Step::Done;
            }
            if self.cursors.iter().any(|c| c.requested.is_some()) {
                return Step::Continue;
            }
            let batch = self.batch(sv, &stream);
            let mut waiting = false;
            for (index, cursor) in self.cursors.iter_mut().enumerate() {
                if !cursor.buffer.is_empty() || cursor.exhausted {
                    continue;
                }
                scan(sv, stream, TAG_CURSOR_BASE + index as u32, &cursor.next, &cursor.end, false, batch);
                cursor.requested = Some(batch);
                waiting = true;
            }
            if waiting {
                return Step::Continue;
            }
            // Every space has a buffered head or is exhausted: emit the earliest.
            let next = self
                .cursors
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.buffer.front().map(|e| (e.timestamp, i)))
                .min();
            let Some((_, index)) = next else {
                sv.io.close(stream, None);
                return Step::Done;
            };
            if sv.io.credit(&stream) <= 0 {
                return Step::Continue;
            }
            if let Some(entry) = self.cursors[index].buffer.pop_front() {
                sv.io.send(stream, Message::Entry(entry));
                self.remaining -= 1;
            }
        }
    }

    fn on_scan(&mut self, sv: &mut Services, stream: StreamId, index: usize, result: StorageResult) -> Step {
        let StorageResult::Pairs(pairs) = result else {
            sv.io.close(stream, Some(storage_error(result).into()));
            return Step::Done;
        };
        let Some(cursor) = self.cursors.get_mut(index) else { return Step::Continue };
        let requested = cursor.requested.take().unwrap_or(Batch { limit: 0, max_bytes: 0 });
        cursor.exhausted = requested.exhausted(&pairs);
        if let Some((last, _)) = pairs.last() {
            cursor.next = successor(last);
        }
        for (key, value) in pairs {
            let Some((_, segment, _)) = keys::parse_space_entry(&key, cursor.prefix_len) else {
                sv.io.close(stream, Some("corrupt space index key".into()));
                return Step::Done;
            };
            match decode_entry(value.into(), &cursor.space, segment) {
                Ok(entry) => cursor.buffer.push_back(entry),
                Err(e) => {
                    sv.io.close(stream, Some(format!("{e}").into()));
                    return Step::Done;
                }
            }
        }
        self.pump(sv, stream)
    }
}

impl StreamOp for ConsumeSpacesOp {
    fn on_end(&mut self, sv: &mut Services, stream: StreamId, end: StreamEnd) -> Step {
        peer_end(sv, stream, end)
    }

    fn on_storage(&mut self, sv: &mut Services, stream: StreamId, tag: u32, result: StorageResult) -> Step {
        match tag.checked_sub(TAG_CURSOR_BASE) {
            Some(index) => self.on_scan(sv, stream, index as usize, result),
            None => Step::Continue,
        }
    }

    fn on_wake(&mut self, sv: &mut Services, stream: StreamId, tag: u32) -> Step {
        if tag == TAG_START && !self.started { self.begin(sv, stream) } else { Step::Continue }
    }

    fn on_credit(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.pump(sv, stream)
    }

    fn on_abort(&mut self, _sv: &mut Services, _stream: StreamId) -> Step {
        Step::Done
    }
}

// ---------------------------------------------------------------------------------------------------
// GetSpaces and GetSegments

/// GetSpaces / GetSegments: names in ascending byte order, one bare string per message.
pub(crate) struct ListOp {
    prefix_len: usize,
    next: Vec<u8>,
    end: Vec<u8>,
    requested: Option<Batch>,
}

impl ListOp {
    pub fn start_spaces(sv: &mut Services, stream: StreamId) -> Option<Box<dyn StreamOp>> {
        Self::start(sv, stream, keys::spaces_range())
    }

    pub fn start_segments(
        sv: &mut Services,
        stream: StreamId,
        request: GetSegments,
    ) -> Option<Box<dyn StreamOp>> {
        if !keys::is_valid_name(&request.space) {
            sv.io.close(stream, None);
            return None;
        }
        Self::start(sv, stream, keys::segments_range(&request.space))
    }

    fn start(sv: &mut Services, stream: StreamId, (next, end): keys::KeyRange) -> Option<Box<dyn StreamOp>> {
        let mut op = Self { prefix_len: next.len(), next, end, requested: None };
        match op.pump(sv, stream) {
            Step::Done => None,
            Step::Continue => Some(Box::new(op)),
        }
    }

    fn pump(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        if self.requested.is_none() && sv.io.credit(&stream) > 0 {
            let batch = credit_batch(sv, &stream, u64::MAX, 1);
            scan(sv, stream, TAG_SCAN, &self.next, &self.end, false, batch);
            self.requested = Some(batch);
        }
        Step::Continue
    }
}

impl StreamOp for ListOp {
    fn on_end(&mut self, sv: &mut Services, stream: StreamId, end: StreamEnd) -> Step {
        peer_end(sv, stream, end)
    }

    fn on_storage(&mut self, sv: &mut Services, stream: StreamId, _tag: u32, result: StorageResult) -> Step {
        let Some(requested) = self.requested.take() else { return Step::Continue };
        let StorageResult::Pairs(pairs) = result else {
            sv.io.close(stream, Some(storage_error(result).into()));
            return Step::Done;
        };
        for (key, _) in &pairs {
            if let Some(name) = key.get(self.prefix_len..).and_then(|n| core::str::from_utf8(n).ok()) {
                sv.io.send(stream, Message::Name(name.into()));
            }
        }
        if requested.exhausted(&pairs) {
            sv.io.close(stream, None);
            return Step::Done;
        }
        if let Some((last, _)) = pairs.last() {
            self.next = successor(last);
        }
        self.pump(sv, stream)
    }

    fn on_credit(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.pump(sv, stream)
    }

    fn on_abort(&mut self, _sv: &mut Services, _stream: StreamId) -> Step {
        Step::Done
    }
}
