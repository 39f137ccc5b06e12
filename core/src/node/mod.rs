//! The per-store engine (PROTOCOL.md §4–6): one [`Node`] per store executes the requests of every logical
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
//! node.handle_bad_message(now, stream, error)        // a later message could not be decoded
//! node.handle_end(now, stream, end)                   // the peer half-closed
//! node.handle_credit(now, stream, n)                  // the transport took n frames of the stream
//! node.handle_storage(now, op, result)                // an effect completed
//! node.handle_bus(now, event)
//! node.handle_timeout(now)                            // when poll_timeout says so
//! while let Some(out) = node.poll_output() { ... }    // after every input
//! ```
//!
//! Flow control: every stream has *send credit* (initially [`NodeConfig::stream_credit`] messages and
//! [`NodeConfig::stream_credit_bytes`] bytes of [`Message::footprint`]); streaming reads only read
//! storage while both are positive, read at most the byte credit per scan, and the transport returns
//! credit as frames leave ([`Node::handle_credit`]). Inbound, a stream only takes messages while
//! [`Node::accepts_input`] holds; [`NodeOutput::Ready`] announces it holds again.

pub mod circuit;
#[cfg(any(test, feature = "sim"))]
pub mod harness;
mod io;
mod io_queue;
pub mod lease;
pub mod presence;
mod produce;
pub mod quota;
mod read;
pub mod subscribe;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_flow;
#[cfg(test)]
mod tests_leases;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_presence;
#[cfg(test)]
mod tests_quota;
#[cfg(test)]
mod tests_subscribe;
pub mod watermark;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use uuid::Uuid;

pub use io::{
    BusCommand, BusEvent, BusMessage, NodeOutput, OpId, PresenceAnnouncement, Refusal,
    segment_notification_route, worker_presence_route,
};
use io_queue::{Io, Owner};

use crate::api::{Envelope, Request, SegmentStatus};
use crate::limits::RequestLimits;
use crate::rand::Rng;
use crate::storage::StorageResult;
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;
use watermark::Watermarks;

/// Maximum entries one consume may return when a limit is given (PROTOCOL.md §6.5).
pub const MAX_CONSUME_ENTRIES: u64 = 10_000_000;

/// Longest server heartbeat interval a subscription or worker may ask for, in seconds.
pub const MAX_HEARTBEAT_SECONDS: i64 = 300;

/// The server heartbeat interval of a subscription or worker stream, in seconds (Go
/// `clampSubscriptionHeartbeatIntervalSeconds`): 0 or less is off (0), more than 300 is 300.
pub fn clamp_heartbeat_seconds(seconds: i64) -> i64 {
    if seconds <= 0 { 0 } else { seconds.min(MAX_HEARTBEAT_SECONDS) }
}

/// Tunables of a node. `Default` gives the values of PROTOCOL.md.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Records per produce chunk (one commit, one status): 10,000.
    pub produce_chunk_records: usize,
    /// Payload bytes after which a produce chunk is sealed early, bounding memory per producer.
    pub produce_chunk_bytes: usize,
    /// Conflicting commits of one chunk retried after re-reading the segment head.
    pub produce_commit_retries: u32,
    /// Order every space through a clock stored with the data, for stores written by several server
    /// instances at once (shared storage such as PostgreSQL).
    ///
    /// Each commit advances the space's clock key to the commit's timestamp, strictly increasing, guarded
    /// by a precondition on the value it read: a commit can therefore never land behind an entry another
    /// instance already committed in the space, and space cursors cannot skip entries whatever instance
    /// wrote them (ARCHITECTURE.md invariant 3 across instances, where node-local watermarks cannot see). The
    /// cost: the commits of one space are serialised (one at a time per node, conflicts retried across
    /// nodes). Off for a single node, whose watermarks already give the guarantee.
    pub shared_space_clock: bool,
    /// Commits retried when another instance advanced the space clock first.
    pub space_clock_retries: u32,
    /// Keep leases in the store (cluster-wide: every instance sharing the store sees them, and they
    /// survive restarts) instead of in the node's memory (Go's behaviour, lost when the node closes).
    /// Each request reads the lease, applies the rules of PROTOCOL.md §6.7 with this instance's clock, and
    /// commits the change guarded by a precondition on what it read, so two instances deciding at once
    /// cannot both win.
    pub leases_in_storage: bool,
    /// Share worker presence with the other instances serving the store, through the bus: each instance
    /// announces its workers on change and every [`NodeConfig::presence_announce_interval`], and an
    /// observer on any instance sees every instance's workers. An instance that stops announcing (it died)
    /// has its workers dropped after `max(30 s, 3 × interval)`.
    pub cluster_presence: bool,
    /// How often an instance with workers re-announces them.
    pub presence_announce_interval: Millis,
    /// Floor of how long another instance's announcement stays valid: its workers are dropped once it
    /// has not announced for `max(presence_stale_floor, 3 × presence_announce_interval)`. 30 s by
    /// default (the floor of the worker TTL, PROTOCOL.md §6.6); lower it only where instances announce often
    /// and a dead instance's workers must vanish quickly (tests, small clusters on a fast bus).
    pub presence_stale_floor: Millis,
    /// Entries read from storage per scan.
    pub read_batch: usize,
    /// Initial send credit of a stream, in messages.
    pub stream_credit: u32,
    /// Initial send credit of a stream in bytes ([`Message::footprint`]), 1 MiB: a stream sends while
    /// it has both kinds of credit, so one stream of large entries holds about this much (plus the
    /// message that crosses it) in the transport's queues, not `stream_credit` whole entries.
    pub stream_credit_bytes: usize,
    /// Whether a message bus is configured (subscriptions need one; produce notifies through it).
    pub bus_configured: bool,
    /// Segment heads cached per node (they spare a storage read per produce).
    pub head_cache_capacity: usize,
    /// Consecutive failed bus publishes that open the notification circuit (PROTOCOL.md §6.2): 5.
    pub notify_failure_threshold: u32,
    /// How long the notification circuit stays open: 1 minute.
    pub notify_open_window: Millis,
    /// Statuses a subscriber may have waiting for send credit (one per segment): 1024.
    pub subscription_queue: usize,
    /// How often expired leases are swept: 60 s.
    pub lease_sweep_interval: Millis,
    /// How often workers that stopped renewing are looked for: 5 s.
    pub presence_sweep_interval: Millis,
    /// What one request may contain (name lengths, metadata, consume spaces).
    pub limits: RequestLimits,
    /// Per-store quotas (none by default).
    pub quotas: quota::QuotaConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            produce_chunk_records: 10_000,
            produce_chunk_bytes: 16 << 20,
            produce_commit_retries: 8,
            shared_space_clock: false,
            space_clock_retries: 64,
            leases_in_storage: false,
            cluster_presence: false,
            presence_announce_interval: Millis::from_secs(10),
            presence_stale_floor: presence::MIN_WORKER_TTL,
            read_batch: 256,
            stream_credit: 256,
            stream_credit_bytes: 1 << 20,
            bus_configured: true,
            head_cache_capacity: 8192,
            notify_failure_threshold: circuit::DEFAULT_NOTIFY_FAILURE_THRESHOLD,
            notify_open_window: circuit::DEFAULT_NOTIFY_OPEN_WINDOW,
            subscription_queue: subscribe::DEFAULT_SUBSCRIPTION_QUEUE,
            lease_sweep_interval: lease::DEFAULT_LEASE_SWEEP_INTERVAL,
            presence_sweep_interval: presence::DEFAULT_PRESENCE_SWEEP_INTERVAL,
            limits: RequestLimits::default(),
            quotas: quota::QuotaConfig::default(),
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
pub(crate) trait StreamOp: Send {
    /// A later message from the peer (only delivered while [`StreamOp::accepts_input`] holds).
    fn on_message(&mut self, _sv: &mut Services, _stream: StreamId, _message: Message) -> Step {
        Step::Continue
    }
    /// A later message from the peer could not be decoded. By default the stream is closed with the
    /// decoder's error (what Go's handlers do when `Decode` fails) and the operation is then aborted.
    fn on_bad_message(&mut self, sv: &mut Services, stream: StreamId, error: String) -> Step {
        sv.io.close(stream, Some(error.into()));
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
    /// A segment notification for this subscriber arrived from the bus.
    fn on_notification(&mut self, _sv: &mut Services, _stream: StreamId, _status: &SegmentStatus) -> Step {
        Step::Continue
    }
    /// The transport lost the stream. Return [`Step::Continue`] only to finish effects already in flight
    /// (their completions still arrive; nothing can be sent any more).
    fn on_abort(&mut self, sv: &mut Services, stream: StreamId) -> Step;
    /// Whether the operation takes another inbound message now.
    fn accepts_input(&self) -> bool {
        false
    }
    /// Whether the operation keeps the messages it takes (and reports them released with
    /// [`Io::release_input`](io_queue::Io::release_input)) instead of being done with each at once.
    fn holds_input(&self) -> bool {
        false
    }
    /// The connection is over its memory budget: let go of held input as soon as possible.
    fn on_pressure(&mut self, _sv: &mut Services, _stream: StreamId) -> Step {
        Step::Continue
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
    /// Monotonic time: every timer, rate and timeout of the node runs on it.
    pub now: Millis,
    /// Wall-clock Unix milliseconds, never decreasing: entry timestamps, space-read bounds, presence
    /// timestamps and leases kept in shared storage. `now + wall_offset`; when the wall clock is
    /// stepped back it keeps advancing with `now` from where it was instead (see `Node::advance`).
    pub wall: Millis,
    /// What to add to `now` to get the wall clock (see [`Node::set_wall_offset`]).
    pub wall_offset: i64,
    pub store_id: Uuid,
    /// This node's identity among the server instances sharing the store (presence announcements).
    pub instance: Uuid,
    pub config: NodeConfig,
    pub rng: Rng,
    pub watermarks: Watermarks,
    pub heads: produce::HeadCache,
    pub clocks: produce::ClockCache,
    pub locks: produce::SegmentLocks,
    pub notify: circuit::NotifyCircuit,
    pub subscriptions: subscribe::Routers,
    pub presence: presence::PresenceRouter,
    pub leases: lease::Leases,
    pub quotas: quota::Quotas,
    waits: Vec<(Owner, Wait)>,
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
    fn satisfied_waits(&mut self) -> Vec<Owner> {
        let mut ready = Vec::new();
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

    /// The greatest timestamp readers of `space` may see right now (PROTOCOL.md §5.5 and §4.3): the watermark,
    /// and never beyond `now`.
    pub fn visible_max(&self, space: &str) -> i64 {
        let now = self.wall.as_timestamp();
        self.watermarks.safe_max(space).map_or(now, |m| m.min(now))
    }
}

/// Answers a request refused before it started: lease requests get Go's validation answer
/// (`LeaseResult{ok:false,message}`, then the close), every other request a close with the text.
fn refuse(sv: &mut Services, stream: StreamId, request: &Request, message: String) {
    match request {
        Request::LeaseAcquire(_) | Request::LeaseRenew(_) | Request::LeaseRelease(_) => {
            sv.io.send(stream, Message::LeaseResult(crate::api::LeaseResult::refused(message)));
            sv.io.close(stream, None);
        }
        _ => sv.io.close(stream, Some(message.into())),
    }
}

/// The engine of one store.
pub struct Node {
    sv: Services,
    streams: BTreeMap<StreamId, Box<dyn StreamOp>>,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("store_id", &self.sv.store_id)
            .field("streams", &self.streams.len())
            .field("pending_effects", &self.sv.io.pending_effects())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node for `store_id`; `seed` drives every random choice (TRX ids).
    pub fn new(store_id: Uuid, config: NodeConfig, now: Millis, seed: u64) -> Self {
        let heads = produce::HeadCache::new(config.head_cache_capacity);
        let clocks = produce::ClockCache::new(config.head_cache_capacity);
        let mut rng = Rng::new(seed);
        let instance = rng.uuid_v4();
        let quotas = quota::Quotas::new(config.quotas.of(&store_id), now);
        Self {
            sv: Services {
                io: Io::default(),
                now,
                wall: now,
                wall_offset: 0,
                store_id,
                instance,
                config,
                rng,
                watermarks: Watermarks::default(),
                heads,
                clocks,
                locks: produce::SegmentLocks::default(),
                notify: circuit::NotifyCircuit::default(),
                subscriptions: subscribe::Routers::default(),
                presence: presence::PresenceRouter::default(),
                leases: lease::Leases::default(),
                quotas,
                waits: Vec::new(),
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

    /// Whether closing the node now would lose nothing: no stream is open (subscriptions and worker
    /// streams included), no effect is in flight, no output is queued, no write holds a watermark, and no
    /// live lease is held (leases exist only in the node's memory).
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
            && self.sv.io.pending_effects() == 0
            && !self.sv.io.has_output()
            && self.sv.watermarks.in_flight() == 0
            && !self.sv.leases.table.has_live(self.sv.now.as_timestamp())
    }

    /// The node's lease table (read-only; leases change through lease requests).
    pub fn leases(&self) -> &lease::LeaseTable {
        &self.sv.leases.table
    }

    /// Consecutive failed bus publishes counted by the notification circuit breaker.
    pub fn notify_failures(&self) -> u32 {
        self.sv.notify.failures()
    }

    fn advance(&mut self, now: Millis) {
        // Time never goes backwards inside the node, whatever the driver's clock does.
        let elapsed = now.saturating_since(self.sv.now);
        if now > self.sv.now {
            self.sv.now = now;
        }
        // The wall clock moves on with the monotonic one even while the system clock is behind (it
        // was stepped back): frozen, it would hide every entry written meanwhile from space reads,
        // which stop below the current millisecond. A step forward is taken as it is.
        self.sv.wall = self.sv.wall + elapsed;
        self.advance_wall();
    }

    fn advance_wall(&mut self) {
        let wall = Millis(self.sv.now.as_u64().saturating_add_signed(self.sv.wall_offset));
        self.sv.wall = self.sv.wall.max(wall);
    }

    /// Sets how far the wall clock is ahead of the monotonic time this node is driven with (wall
    /// minus monotonic, in milliseconds; 0 by default, when the driver's time is wall time).
    ///
    /// The `now` of every input is monotonic: timers (heartbeats, stall and sweep timers, idle
    /// eviction), rates and in-memory lease expiries run on it, so a step of the system clock neither
    /// fires them early nor holds them back. Wall time, `now + offset` and never decreasing, is used
    /// only where the protocol needs it: entry timestamps, space-read bounds, presence timestamps and
    /// leases kept in shared storage. Adapters call this with the latest offset before each input.
    pub fn set_wall_offset(&mut self, offset: i64) {
        self.sv.wall_offset = offset;
        self.advance_wall();
    }

    /// Whether an operation runs under `stream`'s id: its stream is open, or it ended and the operation
    /// still finishes (a producer publishing its last notification). A new request with that id must
    /// wait until it is not ([`Engine`](crate::server::Engine) holds it).
    pub fn is_busy(&self, stream: &StreamId) -> bool {
        self.streams.contains_key(stream)
    }

    /// A stream opened with `envelope` as its first message.
    pub fn handle_request(&mut self, now: Millis, stream: StreamId, envelope: Envelope) {
        self.advance(now);
        if let Some(mut old) = self.streams.remove(&stream) {
            // A driver that does not wait for `is_busy` to clear: the old operation is dropped (its
            // in-flight effects are forgotten).
            old.on_abort(&mut self.sv, stream);
            self.sv.io.cancel_stream(&stream);
        }
        self.sv.io.open_stream(stream, self.sv.config.stream_credit, self.sv.config.stream_credit_bytes);
        let request = match envelope.into_request() {
            Ok(request) => request,
            Err(other) => {
                let error = format!("invalid request msg type: *api.{}", other.go_type_name());
                self.sv.io.close(stream, Some(error.into()));
                self.finish_input();
                return;
            }
        };
        if let Err(refused) = self.sv.config.limits.check_request(&request) {
            self.sv.io.refused(Refusal::Limit(refused.kind));
            refuse(&mut self.sv, stream, &request, refused.message);
            self.finish_input();
            return;
        }
        quota::ensure_measured(&mut self.sv);
        if let Some(op) = self.start(stream, request) {
            self.streams.insert(stream, op);
        }
        self.finish_input();
    }

    /// A stream's first message could not be decoded: it is closed with `error` (Go closes with the decode
    /// error text).
    pub fn handle_bad_request(&mut self, now: Millis, stream: StreamId, error: String) {
        self.advance(now);
        self.sv.io.open_stream(stream, 0, 0);
        self.sv.io.close(stream, Some(error.into()));
        self.finish_input();
    }

    fn start(&mut self, stream: StreamId, request: Request) -> Option<Box<dyn StreamOp>> {
        let sv = &mut self.sv;
        match request {
            Request::Produce(r) => produce::ProduceOp::start(sv, stream, r),
            Request::Peek(r) => read::PeekOp::start(sv, stream, r),
            Request::ConsumeSegment(r) => read::ConsumeSegmentOp::start(sv, stream, r),
            Request::ConsumeSpace(r) => read::ConsumeSpacesOp::start_space(sv, stream, r),
            Request::Consume(r) => read::ConsumeSpacesOp::start_multi(sv, stream, r),
            Request::GetSpaces(_) => read::ListOp::start_spaces(sv, stream),
            Request::GetSegments(r) => read::ListOp::start_segments(sv, stream, r),
            Request::SubscribeToSegmentStatus(r) => subscribe::SubscribeOp::start(sv, stream, r),
            Request::SubscribeWorkers(r) => presence::PresenceOp::start(sv, stream, r),
            Request::LeaseAcquire(r) => lease::start(sv, stream, lease::LeaseCall::Acquire(r)),
            Request::LeaseRenew(r) => lease::start(sv, stream, lease::LeaseCall::Renew(r)),
            Request::LeaseRelease(r) => lease::start(sv, stream, lease::LeaseCall::Release(r)),
        }
    }

    fn dispatch(&mut self, stream: StreamId, f: impl FnOnce(&mut dyn StreamOp, &mut Services) -> Step) {
        let Some(op) = self.streams.get_mut(&stream) else { return };
        if f(op.as_mut(), &mut self.sv) == Step::Done {
            self.streams.remove(&stream);
            self.sv.io.cancel_stream(&stream);
            // A pending visibility wait must not wake a later operation that reuses the channel id.
            self.sv.waits.retain(|(owner, _)| !matches!(owner, Owner::Stream(s, _) if *s == stream));
        }
    }

    /// A later message of a stream.
    pub fn handle_message(&mut self, now: Millis, stream: StreamId, message: Message) {
        self.advance(now);
        self.dispatch(stream, |op, sv| op.on_message(sv, stream, message));
        self.finish_input();
    }

    /// A later message of a stream could not be decoded; `error` is the decoder's text. Most operations
    /// close the stream with it; a worker-presence stream is torn down (PROTOCOL.md §6.6).
    pub fn handle_bad_message(&mut self, now: Millis, stream: StreamId, error: String) {
        self.advance(now);
        self.dispatch(stream, |op, sv| op.on_bad_message(sv, stream, error));
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

    /// The transport took `frames` messages of a stream, of [`Message::footprint`] `bytes` in all: that
    /// much send credit comes back.
    pub fn handle_credit(&mut self, now: Millis, stream: StreamId, frames: u32, bytes: u64) {
        self.advance(now);
        self.sv.io.add_credit(&stream, frames, bytes);
        self.dispatch(stream, |op, sv| op.on_credit(sv, stream));
        self.finish_input();
    }

    /// A storage effect completed.
    pub fn handle_storage(&mut self, now: Millis, op: OpId, result: StorageResult) {
        self.advance(now);
        match self.sv.io.complete(op) {
            Some(Owner::Stream(stream, tag)) => {
                self.dispatch(stream, |o, sv| o.on_storage(sv, stream, tag, result));
            }
            Some(Owner::Quota) => quota::on_usage(&mut self.sv, result),
            _ => {}
        }
        self.finish_input();
    }

    /// A bus effect completed, or a notification arrived.
    pub fn handle_bus(&mut self, now: Millis, event: BusEvent) {
        self.advance(now);
        match event {
            BusEvent::Published { op, result } | BusEvent::Subscribed { op, result } => {
                match self.sv.io.complete(op) {
                    Some(Owner::Stream(stream, tag)) => {
                        self.dispatch(stream, |o, sv| o.on_bus(sv, stream, tag, result));
                    }
                    Some(Owner::Subscriptions(router)) => {
                        let waiting =
                            self.sv.subscriptions.subscribed(&mut self.sv.io, router, result.is_ok());
                        for stream in waiting {
                            let result = result.clone();
                            self.dispatch(stream, |o, sv| {
                                o.on_bus(sv, stream, subscribe::TAG_SUBSCRIBED, result)
                            });
                        }
                    }
                    Some(Owner::Presence(tag)) => presence::on_bus(&mut self.sv, tag, result),
                    Some(Owner::Leases(_) | Owner::Quota) | None => {}
                }
            }
            BusEvent::Notification { route, notification } => {
                // A route is derived from the store id, but a shared bus may still misdeliver.
                if notification.store_id == self.sv.store_id {
                    let status = notification.segment_status;
                    for stream in self.sv.subscriptions.targets(&route, &status) {
                        self.dispatch(stream, |o, sv| o.on_notification(sv, stream, &status));
                    }
                }
            }
            BusEvent::Announcement { announcement, .. } => {
                presence::on_announcement(&mut self.sv, announcement)
            }
            BusEvent::Lost { route, error } => {
                for stream in self.sv.subscriptions.lost(&route) {
                    self.sv.io.close(stream, Some(error.clone().into()));
                }
            }
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
        match owner {
            Owner::Stream(stream, tag) => self.dispatch(stream, |o, sv| o.on_wake(sv, stream, tag)),
            Owner::Presence(tag) => presence::on_timer(&mut self.sv, tag),
            Owner::Leases(_) => lease::on_sweep(&mut self.sv),
            Owner::Quota => quota::measure(&mut self.sv),
            Owner::Subscriptions(_) => {}
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

    /// Whether the stream's operation keeps the input it takes, reporting it released later with
    /// [`NodeOutput::InputReleased`] (a producer, until its chunk is committed).
    pub fn holds_input(&self, stream: &StreamId) -> bool {
        self.streams.get(stream).is_some_and(|op| op.holds_input())
    }

    /// The transport's memory budget is exhausted and this stream holds input: release it soon (a
    /// producer commits its partial chunk).
    pub fn handle_pressure(&mut self, now: Millis, stream: StreamId) {
        self.advance(now);
        self.dispatch(stream, |op, sv| op.on_pressure(sv, stream));
        self.finish_input();
    }

    /// The next output; drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.sv.io.pop()
    }

    /// Whether outputs are queued.
    pub fn has_output(&self) -> bool {
        self.sv.io.has_output()
    }

    /// When [`Node::handle_timeout`] must be called next, with the reason; `now` while output is queued.
    pub fn poll_timeout(&self) -> Option<(Millis, &'static str)> {
        if self.sv.io.has_output() {
            return Some((self.sv.now, "output queued"));
        }
        self.sv.io.next_timer()
    }

    /// Closes every stream with `reason` (node shutdown or eviction). In-flight effects are abandoned.
    pub fn shutdown(&mut self, now: Millis, reason: EndReason) {
        self.advance(now);
        let streams: Vec<StreamId> = self.streams.keys().copied().collect();
        for stream in streams {
            if let Some(mut op) = self.streams.remove(&stream) {
                self.sv.io.close(stream, Some(reason.clone()));
                let _ = op.on_abort(&mut self.sv, stream);
                self.sv.io.cancel_stream(&stream);
            }
        }
        self.sv.io.take_closed();
    }
}
