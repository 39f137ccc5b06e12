//! The node's side of its outputs: the output queue, effect correlation, timers, stream credit and the
//! bookkeeping of closed streams. Every component of a node emits through one [`Io`].

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use super::io::{BusCommand, NodeOutput, OpId};
use crate::storage::StorageOp;
use crate::stream::{EndReason, StreamId};
use crate::time::Millis;
use crate::wire::Message;

/// Who receives the completion of an effect or a wake-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Owner {
    /// A stream operation, with an operation-defined tag.
    Stream(StreamId, u32),
    /// The subscription router.
    Subscriptions(u32),
    /// The worker-presence router.
    Presence(u32),
    /// The lease table.
    Leases(u32),
    /// The store's quotas (usage measurements).
    Quota,
}

/// A stream's send credit: messages and bytes ([`Message::footprint`]) it may still send. Both may go
/// negative (single answers are sent regardless; the message that crosses the byte credit is sent).
#[derive(Clone, Copy, Debug, Default)]
struct Credit {
    messages: i64,
    bytes: i64,
    /// Messages sent and not yet taken by the transport.
    in_flight: u64,
}

/// Output queue and correlation state shared by every component of a node.
#[derive(Debug, Default)]
pub(crate) struct Io {
    out: VecDeque<NodeOutput>,
    next_op: u64,
    pending: BTreeMap<OpId, Owner>,
    timers: BTreeMap<(Millis, u64), (Owner, &'static str)>,
    timer_seq: u64,
    credit: BTreeMap<StreamId, Credit>,
    closed: Vec<StreamId>,
    open: BTreeSet<StreamId>,
}

impl Io {
    /// Registers a stream with its initial send credit.
    pub fn open_stream(&mut self, stream: StreamId, messages: u32, bytes: usize) {
        self.open.insert(stream);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.credit.insert(stream, Credit { messages: messages.into(), bytes, in_flight: 0 });
    }

    /// Sends a message on an open stream (ignored for closed streams).
    pub fn send(&mut self, stream: StreamId, message: Message) {
        if !self.open.contains(&stream) {
            return;
        }
        let charge = message.footprint() as u64;
        if let Some(c) = self.credit.get_mut(&stream) {
            c.messages -= 1;
            c.bytes = c.bytes.saturating_sub(i64::try_from(charge).unwrap_or(i64::MAX));
            c.in_flight += 1;
        }
        self.out.push_back(NodeOutput::Send { stream, message, charge });
    }

    /// Messages the stream may send now: its message credit while it has byte credit left, else
    /// none (may be negative after single responses).
    pub fn credit(&self, stream: &StreamId) -> i64 {
        self.credit.get(stream).map_or(0, |c| if c.bytes > 0 { c.messages } else { c.messages.min(0) })
    }

    /// Whether every message sent on the stream was taken by the transport (coalescing senders, such
    /// as worker inventories, send their next message only then).
    pub fn is_drained(&self, stream: &StreamId) -> bool {
        self.credit.get(stream).is_some_and(|c| c.in_flight == 0)
    }

    /// Bytes the stream may still send (at least one more message may cross it while positive).
    pub fn byte_credit(&self, stream: &StreamId) -> i64 {
        self.credit.get(stream).map_or(0, |c| c.bytes)
    }

    /// Adds credit: `frames` messages of `bytes` footprint the transport has taken.
    pub fn add_credit(&mut self, stream: &StreamId, frames: u32, bytes: u64) {
        if let Some(c) = self.credit.get_mut(stream) {
            c.messages = c.messages.saturating_add(frames.into());
            c.bytes = c.bytes.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
            c.in_flight = c.in_flight.saturating_sub(frames.into());
        }
    }

    /// Ends a stream (`mux::close`, with the error if any) and forgets it.
    pub fn close(&mut self, stream: StreamId, error: Option<EndReason>) {
        if self.open.remove(&stream) {
            self.credit.remove(&stream);
            self.closed.push(stream);
            self.out.push_back(NodeOutput::Close { stream, error });
        }
    }

    /// Forgets a stream the transport lost, without output.
    pub fn forget(&mut self, stream: &StreamId) {
        if self.open.remove(stream) {
            self.credit.remove(stream);
        }
    }

    /// Streams closed since the last call (the node drops their operations).
    pub fn take_closed(&mut self) -> Vec<StreamId> {
        core::mem::take(&mut self.closed)
    }

    /// Reports input the stream's operation no longer holds.
    pub fn release_input(&mut self, stream: StreamId, bytes: u64) {
        if bytes > 0 && self.open.contains(&stream) {
            self.out.push_back(NodeOutput::InputReleased { stream, bytes });
        }
    }

    /// Reports a committed chunk (for metrics).
    pub fn produced(&mut self, records: u64, bytes: u64) {
        self.out.push_back(NodeOutput::Produced { records, bytes });
    }

    /// Reports a refusal (for metrics).
    pub fn refused(&mut self, refusal: super::io::Refusal) {
        self.out.push_back(NodeOutput::Refused(refusal));
    }

    /// Announces that a stream accepts input again.
    pub fn ready(&mut self, stream: StreamId) {
        if self.open.contains(&stream) {
            self.out.push_back(NodeOutput::Ready { stream });
        }
    }

    fn next_op(&mut self, owner: Owner) -> OpId {
        self.next_op += 1;
        let op = OpId(self.next_op);
        self.pending.insert(op, owner);
        op
    }

    /// Emits a storage effect whose completion goes to `owner`.
    pub fn storage(&mut self, owner: Owner, request: StorageOp) -> OpId {
        let op = self.next_op(owner);
        self.out.push_back(NodeOutput::Storage { op, request });
        op
    }

    /// Emits a bus subscribe whose completion goes to `owner`.
    pub fn bus_subscribe(&mut self, owner: Owner, route: String) -> OpId {
        let op = self.next_op(owner);
        self.out.push_back(NodeOutput::Bus(BusCommand::Subscribe { op, route }));
        op
    }

    /// Emits a bus publish whose completion goes to `owner`.
    pub fn bus_publish(
        &mut self,
        owner: Owner,
        route: String,
        notification: crate::api::SegmentNotification,
    ) -> OpId {
        let op = self.next_op(owner);
        self.out.push_back(NodeOutput::Bus(BusCommand::Publish { op, route, notification }));
        op
    }

    /// Emits a presence announcement whose completion goes to `owner`.
    pub fn bus_announce(
        &mut self,
        owner: Owner,
        route: String,
        announcement: super::io::PresenceAnnouncement,
    ) -> OpId {
        let op = self.next_op(owner);
        self.out.push_back(NodeOutput::Bus(BusCommand::Announce { op, route, announcement }));
        op
    }

    /// Emits a bus unsubscribe.
    pub fn bus_unsubscribe(&mut self, route: String) {
        self.out.push_back(NodeOutput::Bus(BusCommand::Unsubscribe { route }));
    }

    /// Who is waiting for the completion of `op` (removing it).
    pub fn complete(&mut self, op: OpId) -> Option<Owner> {
        self.pending.remove(&op)
    }

    /// Arms a timer for `owner` at `at`; `reason` is for debugging (`poll_timeout`).
    pub fn timer(&mut self, owner: Owner, at: Millis, reason: &'static str) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), (owner, reason));
    }

    /// Removes every timer and pending effect of a stream (its completions will be ignored).
    pub fn cancel_stream(&mut self, stream: &StreamId) {
        self.timers.retain(|_, (o, _)| !matches!(o, Owner::Stream(s, _) if s == stream));
        self.pending.retain(|_, o| !matches!(o, Owner::Stream(s, _) if s == stream));
    }

    /// Pops the timers due at `now`.
    pub fn due_timers(&mut self, now: Millis) -> Vec<Owner> {
        let mut due = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove().0);
        }
        due
    }

    /// The next output.
    pub fn pop(&mut self) -> Option<NodeOutput> {
        self.out.pop_front()
    }

    /// Whether outputs are queued.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The earliest timer and its reason.
    pub fn next_timer(&self) -> Option<(Millis, &'static str)> {
        self.timers.iter().next().map(|((at, _), (_, reason))| (*at, *reason))
    }

    /// Number of effects awaiting completion.
    pub fn pending_effects(&self) -> usize {
        self.pending.len()
    }
}
