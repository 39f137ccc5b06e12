//! The per-store engine (spec §4–6): one [`Node`] per store executes the requests of every logical
//! stream addressed to that store, as a pure state machine.
//!
//! A node never touches storage or a bus itself: it emits [`NodeOutput::Storage`] and
//! [`NodeOutput::Bus`] effects and is told their results. Messages arrive typed (the transport decoded
//! them) and leave typed (the transport encodes them, or hands them over in-process).
//!
//! # Driving a node
//!
//! ```text
//! node.handle_request(now, stream, envelope)          // first message of a stream
//! while node.accepts_input(stream) {                  // later messages, pulled with back-pressure
//!     let Some(msg) = transport.next(stream) else { break };
//!     node.handle_message(now, stream, msg);
//! }
//! node.handle_end(now, stream, end)                   // the peer half-closed
//! node.handle_credit(now, stream, n)                  // the transport took n frames of the stream
//! node.handle_storage(now, op, result)                // an effect completed
//! node.handle_bus(now, event)
//! node.handle_timeout(now)                            // when poll_timeout says so
//! while let Some(out) = node.poll_output() { ... }    // after every input
//! ```
//!
//! Flow control: every stream has *send credit* (initially [`NodeConfig::stream_credit`] messages);
//! streaming reads only read storage while credit is positive, and the transport returns credit as frames
//! leave ([`Node::handle_credit`]). Inbound, a stream only takes messages while
//! [`Node::accepts_input`] holds; [`NodeOutput::Ready`] announces it holds again.

#[cfg(any(test, feature = "sim"))]
pub mod harness;
mod io;
mod io_queue;
mod produce;
mod read;
#[cfg(test)]
mod tests;
pub mod watermark;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use uuid::Uuid;

pub use io::{BusCommand, BusEvent, NodeOutput, OpId, segment_notification_route};
use io_queue::{Io, Owner};

use crate::api::Envelope;
use crate::rand::Rng;
use crate::storage::StorageResult;
use crate::stream::{StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;
use watermark::Watermarks;

/// Maximum entries one consume may return when a limit is given (spec §6.5).
pub const MAX_CONSUME_ENTRIES: u64 = 10_000_000;

/// Tunables of a node. `Default` gives the spec's values.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Records per produce chunk (one commit, one status): 10,000.
    pub produce_chunk_records: usize,
    /// Payload bytes after which a produce chunk is sealed early, bounding memory per producer.
    pub produce_chunk_bytes: usize,
    /// Conflicting commits of one chunk retried after re-reading the segment head.
    pub produce_commit_retries: u32,
    /// Entries read from storage per scan.
    pub read_batch: usize,
    /// Initial send credit of a stream, in messages.
    pub stream_credit: u32,
    /// Whether a message bus is configured (subscriptions need one; produce notifies through it).
    pub bus_configured: bool,
    /// Segment heads cached per node (they spare a storage read per produce).
    pub head_cache_capacity: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            produce_chunk_records: 10_000,
            produce_chunk_bytes: 16 << 20,
            produce_commit_retries: 8,
            read_batch: 256,
            stream_credit: 256,
            bus_configured: true,
            head_cache_capacity: 8192,
        }
    }
}

/// What a stream operation reports after handling an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep the operation.
    Continue,
    /// The operation is finished (it has closed its stream, or the stream is gone).
    Done,
}

/// The state machine of one stream's request.
pub(crate) trait StreamOp {
    /// A later message from the peer (only delivered while [`StreamOp::accepts_input`] holds).
    fn on_message(&mut self, _sv: &mut Services, _stream: StreamId, _message: Message) -> Step {
        Step::Continue
    }
    /// The peer ended its side of the stream.
    fn on_end(&mut self, sv: &mut Services, stream: StreamId, end: StreamEnd) -> Step;
    /// A storage effect of this operation completed.
    fn on_storage(
        &mut self,
        _sv: &mut Services,
        _stream: StreamId,
        _tag: u32,
        _result: StorageResult,
    ) -> Step {
        Step::Continue
    }
    /// A bus effect of this operation completed.
    fn on_bus(
        &mut self,
        _sv: &mut Services,
        _stream: StreamId,
        _tag: u32,
        _result: Result<(), String>,
    ) -> Step {
        Step::Continue
    }
    /// A timer or visibility wait of this operation fired.
    fn on_wake(&mut self, _sv: &mut Services, _stream: StreamId, _tag: u32) -> Step {
        Step::Continue
    }
    /// The stream received send credit.
    fn on_credit(&mut self, _sv: &mut Services, _stream: StreamId) -> Step {
        Step::Continue
    }
    /// The transport lost the stream. Return [`Step::Continue`] only to finish effects already in flight
    /// (their completions still arrive; nothing can be sent any more).
    fn on_abort(&mut self, sv: &mut Services, stream: StreamId) -> Step;
    /// Whether the operation takes another inbound message now.
    fn accepts_input(&self) -> bool {
        false
    }
}

/// A condition a component waits for before it is woken.
#[derive(Clone, Debug)]
pub(crate) enum Wait {
    /// `timestamp` of `token` is visible with respect to earlier writes of its space.
    Peers(watermark::Token, i64),
    /// `timestamp` is visible to readers of `space`.
    Space(String, i64),
}

/// Everything a stream operation may use besides its own state.
pub(crate) struct Services {
    pub io: Io,
    pub now: Millis,
    pub store_id: Uuid,
    pub config: NodeConfig,
    pub rng: Rng,
    pub watermarks: Watermarks,
    pub heads: produce::HeadCache,
    pub locks: produce::SegmentLocks,
    waits: alloc::vec::Vec<(Owner, Wait)>,
}

impl Services {
    /// Wakes `owner` once `wait` holds (immediately if it already does).
    pub fn wait(&mut self, owner: Owner, wait: Wait) {
        self.waits.push((owner, wait));
    }

    fn holds(&self, wait: &Wait) -> bool {
        match wait {
            Wait::Peers(token, ts) => self.watermarks.is_visible_for_peers(*token, *ts),
            Wait::Space(space, ts) => self.watermarks.is_visible(space, *ts),
        }
    }

    /// Removes and returns the waiters whose condition holds now.
    fn satisfied_waits(&mut self) -> alloc::vec::Vec<Owner> {
        let mut ready = alloc::vec::Vec::new();
        let mut i = 0;
        while i < self.waits.len() {
            if self.holds(&self.waits[i].1) {
                ready.push(self.waits.swap_remove(i).0);
            } else {
                i += 1;
            }
        }
        ready
    }

    /// The greatest timestamp readers of `space` may see right now (spec §5.5 and §4.3): the watermark,
    /// and never beyond `now`.
    pub fn visible_max(&self, space: &str) -> i64 {
        let now = self.now.as_timestamp();
        self.watermarks.safe_max(space).map_or(now, |m| m.min(now))
    }
}

/// The engine of one store.
pub struct Node {
    sv: Services,
    streams: BTreeMap<StreamId, Box<dyn StreamOp>>,
}

impl Node {
    /// A node for `store_id`; `seed` drives every random choice (TRX ids).
    pub fn new(store_id: Uuid, config: NodeConfig, now: Millis, seed: u64) -> Self {
        let heads = produce::HeadCache::new(config.head_cache_capacity);
        Self {
            sv: Services {
                io: Io::default(),
                now,
                store_id,
                config,
                rng: Rng::new(seed),
                watermarks: Watermarks::default(),
                heads,
                locks: produce::SegmentLocks::default(),
                waits: alloc::vec::Vec::new(),
            },
            streams: BTreeMap::new(),
        }
    }

    /// The store this node serves.
    pub fn store_id(&self) -> Uuid {
        self.sv.store_id
    }

    /// Number of streams with an operation in progress (idle eviction keeps nodes with open streams).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    fn advance(&mut self, now: Millis) {
        // Time never goes backwards inside the node, whatever the driver's clock does.
        if now > self.sv.now {
            self.sv.now = now;
        }
    }

    /// A stream opened with `envelope` as its first message.
    pub fn handle_request(&mut self, now: Millis, stream: StreamId, envelope: Envelope) {
        self.advance(now);
        if let Some(mut old) = self.streams.remove(&stream) {
            // A channel id reused while its previous operation was still finishing: drop the old one.
            old.on_abort(&mut self.sv, stream);
            self.sv.io.cancel_stream(&stream);
        }
        self.sv.io.open_stream(stream, self.sv.config.stream_credit);
        let request = match envelope.into_request() {
            Ok(request) => request,
            Err(other) => {
                let error = format!("invalid request msg type: *api.{}", other.go_type_name());
                self.sv.io.close(stream, Some(error));
                self.finish_input();
                return;
            }
        };
        if let Some(op) = self.start(stream, request) {
            self.streams.insert(stream, op);
        }
        self.finish_input();
    }

    /// A stream's first message could not be decoded: it is closed with `error` (Go closes with the decode
    /// error text).
    pub fn handle_bad_request(&mut self, now: Millis, stream: StreamId, error: String) {
        self.advance(now);
        self.sv.io.open_stream(stream, 0);
        self.sv.io.close(stream, Some(error));
        self.finish_input();
    }

    fn start(&mut self, stream: StreamId, request: crate::api::Request) -> Option<Box<dyn StreamOp>> {
        use crate::api::Request;
        let sv = &mut self.sv;
        match request {
            Request::Produce(r) => produce::ProduceOp::start(sv, stream, r),
            Request::Peek(r) => read::PeekOp::start(sv, stream, r),
            Request::ConsumeSegment(r) => read::ConsumeSegmentOp::start(sv, stream, r),
            Request::ConsumeSpace(r) => read::ConsumeSpacesOp::start_space(sv, stream, r),
            Request::Consume(r) => read::ConsumeSpacesOp::start_multi(sv, stream, r),
            Request::GetSpaces(_) => read::ListOp::start_spaces(sv, stream),
            Request::GetSegments(r) => read::ListOp::start_segments(sv, stream, r),
            other => {
                // Subscriptions, worker presence and leases are served by components added separately;
                // until then they are refused explicitly rather than left hanging.
                let error = format!("unsupported request: {}", other.op_name());
                sv.io.close(stream, Some(error));
                None
            }
        }
    }

    fn dispatch(&mut self, stream: StreamId, f: impl FnOnce(&mut dyn StreamOp, &mut Services) -> Step) {
        let Some(op) = self.streams.get_mut(&stream) else { return };
        if f(op.as_mut(), &mut self.sv) == Step::Done {
            self.streams.remove(&stream);
            self.sv.io.cancel_stream(&stream);
        }
    }

    /// A later message of a stream.
    pub fn handle_message(&mut self, now: Millis, stream: StreamId, message: Message) {
        self.advance(now);
        self.dispatch(stream, |op, sv| op.on_message(sv, stream, message));
        self.finish_input();
    }

    /// A later message of a stream could not be decoded: the operation fails and the stream closes with
    /// `error` (Go closes with the decode error).
    pub fn handle_invalid(&mut self, now: Millis, stream: StreamId, error: String) {
        self.advance(now);
        if self.streams.contains_key(&stream) {
            self.sv.io.close(stream, Some(error));
        }
        self.finish_input();
    }

    /// The peer ended its side of a stream (clean `mux::close` or an error).
    pub fn handle_end(&mut self, now: Millis, stream: StreamId, end: StreamEnd) {
        self.advance(now);
        self.dispatch(stream, |op, sv| op.on_end(sv, stream, end));
        self.finish_input();
    }

    /// The transport lost a stream (connection closed, overload): stop serving it, send nothing.
    pub fn handle_aborted(&mut self, now: Millis, stream: StreamId) {
        self.advance(now);
        self.sv.io.forget(&stream);
        self.dispatch(stream, |op, sv| op.on_abort(sv, stream));
        self.finish_input();
    }

    /// The transport took `frames` messages of a stream: that much send credit comes back.
    pub fn handle_credit(&mut self, now: Millis, stream: StreamId, frames: u32) {
        self.advance(now);
        self.sv.io.add_credit(&stream, frames);
        self.dispatch(stream, |op, sv| op.on_credit(sv, stream));
        self.finish_input();
    }

    /// A storage effect completed.
    pub fn handle_storage(&mut self, now: Millis, op: OpId, result: StorageResult) {
        self.advance(now);
        if let Some(Owner::Stream(stream, tag)) = self.sv.io.complete(op) {
            self.dispatch(stream, |o, sv| o.on_storage(sv, stream, tag, result));
        }
        self.finish_input();
    }

    /// A bus effect completed, or a notification arrived.
    pub fn handle_bus(&mut self, now: Millis, event: BusEvent) {
        self.advance(now);
        match event {
            BusEvent::Published { op, result } | BusEvent::Subscribed { op, result } => {
                if let Some(Owner::Stream(stream, tag)) = self.sv.io.complete(op) {
                    self.dispatch(stream, |o, sv| o.on_bus(sv, stream, tag, result));
                }
            }
            BusEvent::Notification { .. } | BusEvent::Lost { .. } => {}
        }
        self.finish_input();
    }

    /// Timers due at `now` fire.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.advance(now);
        for owner in self.sv.io.due_timers(self.sv.now) {
            self.wake(owner);
        }
        self.finish_input();
    }

    fn wake(&mut self, owner: Owner) {
        if let Owner::Stream(stream, tag) = owner {
            self.dispatch(stream, |o, sv| o.on_wake(sv, stream, tag));
        }
    }

    /// Runs after every input: wakes satisfied visibility waits (which may change watermarks and satisfy
    /// others) and drops the operations of closed streams.
    fn finish_input(&mut self) {
        loop {
            let ready = self.sv.satisfied_waits();
            if ready.is_empty() {
                break;
            }
            for owner in ready {
                self.wake(owner);
            }
        }
        // A stream closed by a component other than its own operation (e.g. a subscriber dropped by its
        // router): the operation releases what it holds. Operations that close their own stream report
        // Done and are already gone.
        for stream in self.sv.io.take_closed() {
            self.dispatch(stream, |op, sv| op.on_abort(sv, stream));
        }
    }

    /// Whether the stream takes another inbound message now.
    pub fn accepts_input(&self, stream: &StreamId) -> bool {
        self.streams.get(stream).is_some_and(|op| op.accepts_input())
    }

    /// The next output; drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.sv.io.pop()
    }

    /// When [`Node::handle_timeout`] must be called next, with the reason; `now` while output is queued.
    pub fn poll_timeout(&self) -> Option<(Millis, &'static str)> {
        if self.sv.io.has_output() {
            return Some((self.sv.now, "output queued"));
        }
        self.sv.io.next_timer()
    }

    /// Closes every stream with `reason` (node shutdown or eviction). In-flight effects are abandoned.
    pub fn shutdown(&mut self, now: Millis, reason: &str) {
        self.advance(now);
        let streams: alloc::vec::Vec<StreamId> = self.streams.keys().copied().collect();
        for stream in streams {
            if let Some(mut op) = self.streams.remove(&stream) {
                self.sv.io.close(stream, Some(reason.into()));
                let _ = op.on_abort(&mut self.sv, stream);
                self.sv.io.cancel_stream(&stream);
            }
        }
        self.sv.io.take_closed();
    }
}
