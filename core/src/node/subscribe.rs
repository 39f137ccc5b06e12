//! Segment-status subscriptions (PROTOCOL.md §4.7, §6.3): a snapshot of a segment (or of every segment of a
//! space, `"*"`), then live updates from the message bus.
//!
//! **Routers.** A node holds one router per space with subscribers. The router owns the node's single
//! bus subscription to the space's route (subscribed with the first subscriber, unsubscribed exactly
//! once when the last one leaves) and tells the node which subscribers a notification concerns: the
//! exact subscribers of its segment and the wildcard subscribers. A route the bus reports lost closes its
//! subscribers with the bus's error; the next subscriber subscribes again.
//!
//! **Subscribers.** Each subscriber (`SubscribeOp`):
//! 1. waits for the router's bus subscription (a failure closes it with
//!    `failed to connect to the message bus`), so that no update committed after its snapshot can be
//!    missed;
//! 2. sends a heartbeat at once and every interval, when asked for (`heartbeat_interval_seconds`, 0 = off,
//!    at most 300 s);
//! 3. takes its snapshot from the persisted segment heads: the one segment, or the segment inventory of the
//!    space read in batches and each head read in turn (in name order), only while the stream has send
//!    credit, so a large space never sits in memory. Each status waits until its `last_timestamp` is
//!    visible in the space (§5.5);
//! 4. meanwhile buffers notifications, one per segment (the newest), and sends them after the snapshot
//!    in segment-name order, dropping those not newer than what the snapshot sent (Go sends them anyway);
//! 5. then forwards live notifications.
//!
//! A subscriber never sends a status older than one it already sent for the same segment, so its
//! `last_sequence` per segment never goes backwards (ARCHITECTURE.md invariant 4), whatever order the bus,
//! the snapshot and other nodes produce them in.
//!
//! Statuses wait for send credit in a queue of at most `subscription_queue` (1024) statuses holding one
//! per segment: a newer status replaces the queued one of its segment in place. A subscriber whose queue
//! is full of other segments is dropped with `subscription send queue overloaded`. Heartbeats do not
//! queue: one pending heartbeat at most. Every drop by the server closes the stream with its reason.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use uuid::Uuid;

use super::io_queue::{Io, Owner};
use super::{Services, Step, StreamOp, Wait, clamp_heartbeat_seconds, segment_notification_route};
use crate::api::{SegmentStatus, SubscribeToSegmentStatus};
use crate::storage::encoding::SegmentHead;
use crate::storage::{ScanRange, StorageOp, StorageResult, keys};
use crate::stream::{StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;

/// The segment name that subscribes to every segment of a space.
pub const WILDCARD: &str = "*";
/// Default bound of a subscriber's send queue (statuses, one per segment).
pub const DEFAULT_SUBSCRIPTION_QUEUE: usize = 1024;

/// Close text when the node has no message bus.
pub const NO_BUS: &str = "the message bus was not configured";
/// Close text when the bus subscription of the space failed.
pub const BUS_CONNECT_FAILED: &str = "failed to connect to the message bus";
/// Close text of a subscriber whose send queue overflowed.
pub const QUEUE_OVERLOADED: &str = "subscription send queue overloaded";

/// The router's bus subscription completed (the node dispatches it to every waiting subscriber).
pub(crate) const TAG_SUBSCRIBED: u32 = 1;
const TAG_HEAD: u32 = 2;
const TAG_SEGMENTS: u32 = 3;
const TAG_VISIBLE: u32 = 4;
const TAG_HEARTBEAT: u32 = 5;

/// Identifies a router for as long as it lives (a later router of the same space gets a new id).
pub(crate) type RouterId = u32;

#[derive(Debug)]
struct Router {
    id: RouterId,
    /// Whether the bus acknowledged the subscription.
    subscribed: bool,
    exact: BTreeMap<String, BTreeSet<StreamId>>,
    wildcard: BTreeSet<StreamId>,
}

impl Router {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    fn members(&self) -> Vec<StreamId> {
        let mut all: BTreeSet<StreamId> = self.wildcard.clone();
        for streams in self.exact.values() {
            all.extend(streams.iter().copied());
        }
        all.into_iter().collect()
    }
}

/// The subscription routers of a node, by bus route.
#[derive(Debug, Default)]
pub(crate) struct Routers {
    routers: BTreeMap<String, Router>,
    ids: BTreeMap<RouterId, String>,
    next_id: RouterId,
}

impl Routers {
    /// Adds a subscriber, creating the space's router (and its bus subscription) on first use. Returns the
    /// router and whether its bus subscription is already in place.
    fn register(
        &mut self,
        io: &mut Io,
        store_id: &Uuid,
        space: &str,
        segment: &str,
        stream: StreamId,
    ) -> (RouterId, bool) {
        let route = segment_notification_route(store_id, space);
        let router = match self.routers.get_mut(&route) {
            Some(router) => router,
            None => {
                let id = self.fresh_id();
                io.bus_subscribe(Owner::Subscriptions(id), route.clone());
                self.ids.insert(id, route.clone());
                let router =
                    Router { id, subscribed: false, exact: BTreeMap::new(), wildcard: BTreeSet::new() };
                self.routers.entry(route).or_insert(router)
            }
        };
        if segment == WILDCARD {
            router.wildcard.insert(stream);
        } else {
            router.exact.entry(segment.into()).or_default().insert(stream);
        }
        (router.id, router.subscribed)
    }

    fn fresh_id(&mut self) -> RouterId {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if !self.ids.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Removes a subscriber; the last one of a subscribed router unsubscribes it. A router whose
    /// subscription is still in flight stays until the bus answers (then it unsubscribes, if still empty).
    fn unregister(&mut self, io: &mut Io, id: RouterId, segment: &str, stream: StreamId) {
        let Some(route) = self.ids.get(&id) else { return };
        let Some(router) = self.routers.get_mut(route) else { return };
        if segment == WILDCARD {
            router.wildcard.remove(&stream);
        } else if let Some(streams) = router.exact.get_mut(segment) {
            streams.remove(&stream);
            if streams.is_empty() {
                router.exact.remove(segment);
            }
        }
        if router.is_empty() && router.subscribed {
            let route = route.clone();
            self.remove(id);
            io.bus_unsubscribe(route);
        }
    }

    fn remove(&mut self, id: RouterId) -> Option<Router> {
        let route = self.ids.remove(&id)?;
        self.routers.remove(&route)
    }

    /// The bus answered a router's subscribe: returns the subscribers to tell. A failed router is gone (the
    /// next subscriber tries again); a router nobody waits for any more unsubscribes at once.
    pub fn subscribed(&mut self, io: &mut Io, id: RouterId, ok: bool) -> Vec<StreamId> {
        let Some(route) = self.ids.get(&id).cloned() else { return Vec::new() };
        if !ok {
            return self.remove(id).map(|r| r.members()).unwrap_or_default();
        }
        let Some(router) = self.routers.get_mut(&route) else { return Vec::new() };
        router.subscribed = true;
        if router.is_empty() {
            self.remove(id);
            io.bus_unsubscribe(route);
            return Vec::new();
        }
        router.members()
    }

    /// The bus lost a route: its router is gone (nothing to unsubscribe); returns the subscribers to close.
    pub fn lost(&mut self, route: &str) -> Vec<StreamId> {
        let Some(id) = self.routers.get(route).map(|r| r.id) else { return Vec::new() };
        self.remove(id).map(|r| r.members()).unwrap_or_default()
    }

    /// The subscribers a notification on `route` concerns: the wildcard ones and those of its segment.
    pub fn targets(&self, route: &str, status: &SegmentStatus) -> Vec<StreamId> {
        let Some(router) = self.routers.get(route) else { return Vec::new() };
        let mut targets: Vec<StreamId> = router.wildcard.iter().copied().collect();
        if let Some(exact) = router.exact.get(&status.segment) {
            targets.extend(exact.iter().copied());
        }
        targets
    }

    /// Number of routers (spaces with subscribers or a subscription in flight).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.routers.len()
    }
}

/// The heartbeat interval of a subscription request, `None` when off.
fn heartbeat_interval(seconds: i64) -> Option<Millis> {
    match clamp_heartbeat_seconds(seconds) {
        0 => None,
        s => Some(Millis::from_secs(s.unsigned_abs())),
    }
}

/// What the snapshot is waiting for.
#[derive(Debug)]
enum Pending {
    Nothing,
    /// A scan of the segment inventory, of at most this many names.
    Segments(usize),
    /// The head of this segment.
    Head(String),
    /// This status to become visible in the space.
    Visible(SegmentStatus),
}

#[derive(Debug)]
struct Snapshot {
    /// Segments whose heads are still to be read, in name order (one inventory batch at a time).
    names: VecDeque<String>,
    /// Where the inventory scan resumes and ends, while it is not exhausted.
    inventory: Option<(Vec<u8>, Vec<u8>)>,
    pending: Pending,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the router's bus subscription.
    Connecting,
    /// Reading the snapshot.
    Snapshot(Snapshot),
    /// Forwarding notifications.
    Live,
}

/// The queue was full of other segments.
struct Overloaded;

/// One subscriber.
pub(crate) struct SubscribeOp {
    space: String,
    /// The requested segment, or [`WILDCARD`].
    segment: String,
    router: RouterId,
    heartbeat: Option<Millis>,
    heartbeat_due: bool,
    phase: Phase,
    /// Statuses waiting for credit, at most one per segment.
    queue: VecDeque<SegmentStatus>,
    /// Highest `last_sequence` sent or queued per segment: nothing older is ever sent. One entry per
    /// segment the subscriber has been told about (a wildcard subscriber: up to the segments of its
    /// space), which is what monotonicity per segment costs.
    high: BTreeMap<String, u64>,
    /// Notifications received before the snapshot completed, the newest per segment.
    buffered: BTreeMap<String, SegmentStatus>,
    /// Bound of `queue`, and of `buffered` (segments).
    limit: usize,
}

impl SubscribeOp {
    pub fn start(
        sv: &mut Services,
        stream: StreamId,
        request: SubscribeToSegmentStatus,
    ) -> Option<Box<dyn StreamOp>> {
        if !sv.config.bus_configured {
            sv.io.close(stream, Some(NO_BUS.into()));
            return None;
        }
        let (router, connected) =
            sv.subscriptions.register(&mut sv.io, &sv.store_id, &request.space, &request.segment, stream);
        let mut op = Self {
            space: request.space,
            segment: request.segment,
            router,
            heartbeat: heartbeat_interval(request.heartbeat_interval_seconds),
            heartbeat_due: false,
            phase: Phase::Connecting,
            queue: VecDeque::new(),
            high: BTreeMap::new(),
            buffered: BTreeMap::new(),
            limit: sv.config.subscription_queue.max(1),
        };
        if connected && op.connected(sv, stream) == Step::Done {
            return None;
        }
        Some(Box::new(op))
    }

    fn is_wildcard(&self) -> bool {
        self.segment == WILDCARD
    }

    /// The bus subscription is in place: heartbeats start and the snapshot is taken.
    fn connected(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        if let Some(interval) = self.heartbeat {
            self.heartbeat_due = true;
            sv.io.timer(Owner::Stream(stream, TAG_HEARTBEAT), sv.now + interval, "subscription heartbeat");
        }
        // Names that cannot exist in storage have nothing to snapshot.
        let space_ok = keys::is_valid_name(&self.space);
        let snapshot = if self.is_wildcard() {
            Snapshot {
                names: VecDeque::new(),
                inventory: space_ok.then(|| keys::segments_range(&self.space)),
                pending: Pending::Nothing,
            }
        } else {
            let mut names = VecDeque::new();
            if space_ok && keys::is_valid_name(&self.segment) {
                names.push_back(self.segment.clone());
            }
            Snapshot { names, inventory: None, pending: Pending::Nothing }
        };
        self.phase = Phase::Snapshot(snapshot);
        self.pump(sv, stream)
    }

    /// Sends what credit allows, then moves the snapshot on (only once everything read so far has left,
    /// so at most one inventory batch and one status are held per subscriber).
    fn pump(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.flush(sv, stream);
        let Phase::Snapshot(snapshot) = &mut self.phase else { return Step::Continue };
        if !matches!(snapshot.pending, Pending::Nothing)
            || !self.queue.is_empty()
            || sv.io.credit(&stream) <= 0
        {
            return Step::Continue;
        }
        if let Some(name) = snapshot.names.pop_front() {
            let key = keys::segment_status(&self.space, &name);
            sv.io.storage(Owner::Stream(stream, TAG_HEAD), StorageOp::Get { key });
            snapshot.pending = Pending::Head(name);
            return Step::Continue;
        }
        if let Some((next, end)) = &snapshot.inventory {
            let limit = sv.config.read_batch.max(1);
            let range = ScanRange::new(next.clone(), end.clone(), limit);
            sv.io.storage(Owner::Stream(stream, TAG_SEGMENTS), StorageOp::Scan(range));
            snapshot.pending = Pending::Segments(limit);
            return Step::Continue;
        }
        // Snapshot complete: what arrived meanwhile follows in segment-name order, minus what the snapshot
        // already covered.
        self.phase = Phase::Live;
        for (_, status) in core::mem::take(&mut self.buffered) {
            if self.offer(status).is_err() {
                return self.drop_subscriber(sv, stream, QUEUE_OVERLOADED.into());
            }
        }
        self.flush(sv, stream);
        Step::Continue
    }

    /// Queues a status unless one at least as new was already sent or queued for its segment; a queued
    /// status of the same segment is replaced in place.
    fn offer(&mut self, status: SegmentStatus) -> Result<(), Overloaded> {
        if self.high.get(&status.segment).is_some_and(|high| *high >= status.last_sequence) {
            return Ok(());
        }
        if let Some(queued) = self.queue.iter_mut().find(|q| q.segment == status.segment) {
            self.high.insert(status.segment.clone(), status.last_sequence);
            *queued = status;
            return Ok(());
        }
        if self.queue.len() >= self.limit {
            return Err(Overloaded);
        }
        self.high.insert(status.segment.clone(), status.last_sequence);
        self.queue.push_back(status);
        Ok(())
    }

    fn flush(&mut self, sv: &mut Services, stream: StreamId) {
        while sv.io.credit(&stream) > 0 {
            if self.heartbeat_due {
                self.heartbeat_due = false;
                let heartbeat = SegmentStatus::heartbeat(self.space.clone(), self.segment.clone());
                sv.io.send(stream, Message::Status(heartbeat));
            } else if let Some(status) = self.queue.pop_front() {
                sv.io.send(stream, Message::Status(status));
            } else {
                break;
            }
        }
    }

    /// Leaves the router and closes the stream with `reason` (Go closes silently; the client deserves to
    /// know).
    fn drop_subscriber(&mut self, sv: &mut Services, stream: StreamId, reason: String) -> Step {
        self.leave(sv, stream);
        sv.io.close(stream, Some(reason.into()));
        Step::Done
    }

    fn leave(&mut self, sv: &mut Services, stream: StreamId) {
        sv.subscriptions.unregister(&mut sv.io, self.router, &self.segment, stream);
    }

    fn on_head(&mut self, sv: &mut Services, stream: StreamId, result: StorageResult) -> Step {
        let Phase::Snapshot(snapshot) = &mut self.phase else { return Step::Continue };
        let Pending::Head(name) = core::mem::replace(&mut snapshot.pending, Pending::Nothing) else {
            return Step::Continue;
        };
        let head = match result {
            StorageResult::Value(None) => None,
            StorageResult::Value(Some(bytes)) => match SegmentHead::decode(&bytes) {
                Ok(head) => Some(head),
                Err(e) => return self.drop_subscriber(sv, stream, format!("{e}")),
            },
            StorageResult::Failed(e) => return self.drop_subscriber(sv, stream, e.0),
            other => {
                return self.drop_subscriber(sv, stream, format!("unexpected storage result: {other:?}"));
            }
        };
        match head {
            Some(head) if head.last_sequence > 0 => {
                let status = head.status(&self.space, &name);
                sv.wait(
                    Owner::Stream(stream, TAG_VISIBLE),
                    Wait::Space(self.space.clone(), head.last_timestamp),
                );
                snapshot.pending = Pending::Visible(status);
                Step::Continue
            }
            // Empty segments are skipped, as in Go.
            _ => self.pump(sv, stream),
        }
    }

    fn on_segments(&mut self, sv: &mut Services, stream: StreamId, result: StorageResult) -> Step {
        let Phase::Snapshot(snapshot) = &mut self.phase else { return Step::Continue };
        let Pending::Segments(limit) = core::mem::replace(&mut snapshot.pending, Pending::Nothing) else {
            return Step::Continue;
        };
        let pairs = match result {
            StorageResult::Pairs(pairs) => pairs,
            StorageResult::Failed(e) => return self.drop_subscriber(sv, stream, e.0),
            other => {
                return self.drop_subscriber(sv, stream, format!("unexpected storage result: {other:?}"));
            }
        };
        let Some((next, end)) = snapshot.inventory.take() else { return Step::Continue };
        let prefix_len = keys::segments_range(&self.space).0.len();
        for (key, _) in &pairs {
            if let Some(name) = key.get(prefix_len..).and_then(|n| core::str::from_utf8(n).ok()) {
                snapshot.names.push_back(name.into());
            }
        }
        if pairs.len() >= limit {
            let resume = pairs.last().map_or(next, |(last, _)| {
                let mut after = last.clone();
                after.push(0);
                after
            });
            snapshot.inventory = Some((resume, end));
        }
        self.pump(sv, stream)
    }
}

impl StreamOp for SubscribeOp {
    fn accepts_input(&self) -> bool {
        // Clients send nothing after the request (Go never reads); anything sent is taken and dropped so
        // it cannot pile up in the transport.
        true
    }

    fn on_bad_message(&mut self, _sv: &mut Services, _stream: StreamId, _error: String) -> Step {
        // Like any other message a client should not have sent here: dropped.
        Step::Continue
    }

    fn on_end(&mut self, sv: &mut Services, stream: StreamId, _end: StreamEnd) -> Step {
        self.leave(sv, stream);
        sv.io.close(stream, None);
        Step::Done
    }

    fn on_abort(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.leave(sv, stream);
        Step::Done
    }

    fn on_bus(&mut self, sv: &mut Services, stream: StreamId, tag: u32, result: Result<(), String>) -> Step {
        if tag != TAG_SUBSCRIBED || !matches!(self.phase, Phase::Connecting) {
            return Step::Continue;
        }
        match result {
            Ok(()) => self.connected(sv, stream),
            Err(_) => self.drop_subscriber(sv, stream, BUS_CONNECT_FAILED.into()),
        }
    }

    fn on_storage(&mut self, sv: &mut Services, stream: StreamId, tag: u32, result: StorageResult) -> Step {
        match tag {
            TAG_HEAD => self.on_head(sv, stream, result),
            TAG_SEGMENTS => self.on_segments(sv, stream, result),
            _ => Step::Continue,
        }
    }

    fn on_wake(&mut self, sv: &mut Services, stream: StreamId, tag: u32) -> Step {
        match tag {
            TAG_VISIBLE => {
                let Phase::Snapshot(snapshot) = &mut self.phase else { return Step::Continue };
                let Pending::Visible(status) = core::mem::replace(&mut snapshot.pending, Pending::Nothing)
                else {
                    return Step::Continue;
                };
                if self.offer(status).is_err() {
                    return self.drop_subscriber(sv, stream, QUEUE_OVERLOADED.into());
                }
                self.pump(sv, stream)
            }
            TAG_HEARTBEAT => {
                if let Some(interval) = self.heartbeat {
                    self.heartbeat_due = true;
                    sv.io.timer(
                        Owner::Stream(stream, TAG_HEARTBEAT),
                        sv.now + interval,
                        "subscription heartbeat",
                    );
                    self.flush(sv, stream);
                }
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    fn on_credit(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        self.pump(sv, stream)
    }

    fn on_notification(&mut self, sv: &mut Services, stream: StreamId, status: &SegmentStatus) -> Step {
        if status.heartbeat
            || status.space != self.space
            || (!self.is_wildcard() && status.segment != self.segment)
        {
            return Step::Continue;
        }
        match self.phase {
            Phase::Connecting | Phase::Snapshot(_) => {
                let newer =
                    self.buffered.get(&status.segment).is_none_or(|b| b.last_sequence < status.last_sequence);
                if !newer {
                    return Step::Continue;
                }
                if !self.buffered.contains_key(&status.segment) && self.buffered.len() >= self.limit {
                    return self.drop_subscriber(sv, stream, QUEUE_OVERLOADED.into());
                }
                self.buffered.insert(status.segment.clone(), status.clone());
                Step::Continue
            }
            Phase::Live => {
                if self.offer(status.clone()).is_err() {
                    return self.drop_subscriber(sv, stream, QUEUE_OVERLOADED.into());
                }
                self.flush(sv, stream);
                Step::Continue
            }
        }
    }
}
