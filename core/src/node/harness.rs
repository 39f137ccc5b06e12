//! A synchronous driver for one [`Node`] over an in-memory store and bus, on virtual time: the reference
//! driver the node's tests use, and a model of what adapters do.
//!
//! Storage effects run immediately unless [`NodeHarness::hold_storage`] is set, in which case they wait until
//! the test releases them (to interleave concurrent operations deliberately). Send credit returns as soon
//! as a message is recorded, unless [`NodeHarness::manual_credit`] is set.
//!
//! The bus is in memory: a publish on a route this node subscribed to is delivered back to it (as a
//! single-node deployment would), [`NodeHarness::notify`] delivers a notification as if another server
//! instance had published it, and subscribes can be held, failed or their routes lost.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use uuid::Uuid;

use super::{BusCommand, BusEvent, Node, NodeConfig, NodeOutput, OpId};
use crate::api::{
    Entry, Envelope, LeaseResult, Presence, Request, SegmentNotification, SegmentStatus, WorkerInventory,
};
use crate::storage::memory::MemoryKv;
use crate::storage::{OrderedKv, StorageOp};
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;

/// What the node did on one stream, as its client would see it.
#[derive(Debug, Default, Clone)]
pub struct StreamLog {
    /// Messages sent to the client, in order.
    pub sent: Vec<Message>,
    /// `Some(error)` once the node closed the stream.
    pub closed: Option<Option<EndReason>>,
    /// The text of the close error, as the `mux::close` carries it.
    close_text: Option<String>,
}

impl StreamLog {
    /// The entries sent.
    pub fn entries(&self) -> Vec<Entry> {
        self.sent
            .iter()
            .filter_map(|m| if let Message::Entry(e) = m { Some(e.clone()) } else { None })
            .collect()
    }

    /// The statuses sent.
    pub fn statuses(&self) -> Vec<SegmentStatus> {
        self.sent
            .iter()
            .filter_map(|m| if let Message::Status(s) = m { Some(s.clone()) } else { None })
            .collect()
    }

    /// The statuses sent, heartbeats excluded.
    pub fn data_statuses(&self) -> Vec<SegmentStatus> {
        self.statuses().into_iter().filter(|s| !s.heartbeat).collect()
    }

    /// The heartbeats sent.
    pub fn heartbeats(&self) -> Vec<SegmentStatus> {
        self.statuses().into_iter().filter(|s| s.heartbeat).collect()
    }

    /// The lease results sent.
    pub fn lease_results(&self) -> Vec<LeaseResult> {
        self.sent
            .iter()
            .filter_map(|m| if let Message::LeaseResult(r) = m { Some(r.clone()) } else { None })
            .collect()
    }

    /// The worker inventories sent.
    pub fn inventories(&self) -> Vec<WorkerInventory> {
        self.sent
            .iter()
            .filter_map(|m| match m {
                Message::Envelope(Envelope::WorkerInventory(i)) => Some(WorkerInventory::clone(i)),
                _ => None,
            })
            .collect()
    }

    /// The presence envelopes sent (server heartbeats).
    pub fn presences(&self) -> Vec<Presence> {
        self.sent
            .iter()
            .filter_map(|m| match m {
                Message::Envelope(Envelope::Presence(p)) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The names sent.
    pub fn names(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter_map(|m| if let Message::Name(n) = m { Some(n.clone()) } else { None })
            .collect()
    }

    /// The text of the close error, panicking if the stream is still open (tests only).
    pub fn close_error(&self) -> Option<&str> {
        assert!(self.closed.is_some(), "stream still open");
        self.close_text.as_deref()
    }

    /// Why the stream was closed with an error, panicking if it is still open (tests only).
    pub fn close_reason(&self) -> Option<&EndReason> {
        self.closed.as_ref().expect("stream still open").as_ref()
    }
}

enum Inbound {
    Message(Message),
    /// A message the transport could not decode, with the decoder's error.
    Undecodable(String),
    End(StreamEnd),
}

/// The test driver.
pub struct NodeHarness {
    /// The node under test.
    pub node: Node,
    /// Its store.
    pub kv: MemoryKv,
    /// Virtual time.
    pub now: Millis,
    /// Hold storage effects until [`NodeHarness::release_storage`].
    pub hold_storage: bool,
    /// Do not return send credit automatically.
    pub manual_credit: bool,
    /// Make bus publishes fail with this text.
    pub bus_error: Option<String>,
    /// Make bus subscribes fail with this text.
    pub subscribe_error: Option<String>,
    /// Hold bus subscribes until [`NodeHarness::release_subscribes`].
    pub hold_subscribes: bool,
    /// Everything published on the bus.
    pub published: Vec<SegmentNotification>,
    /// Every presence announcement published on the bus.
    pub announcements: Vec<crate::node::PresenceAnnouncement>,
    /// Number of publishes attempted (failed ones included).
    pub publish_attempts: usize,
    /// Bus subscribe/unsubscribe calls, in order (`+route` / `-route`).
    pub bus_calls: Vec<String>,
    /// Refusals the node reported, in order.
    pub refusals: Vec<super::Refusal>,
    /// Records and payload bytes the node reported committed (`NodeOutput::Produced`), summed.
    pub produced: (u64, u64),
    /// Input footprint each stream's operation reported released ([`NodeOutput::InputReleased`]).
    pub released_input: BTreeMap<StreamId, u64>,
    held: VecDeque<(OpId, StorageOp)>,
    held_subscribes: VecDeque<(OpId, String)>,
    subscribed: BTreeSet<String>,
    logs: BTreeMap<StreamId, StreamLog>,
    inbox: BTreeMap<StreamId, VecDeque<Inbound>>,
    /// With `manual_credit`: footprints of the messages sent and not yet credited, oldest first.
    unacked: BTreeMap<StreamId, VecDeque<u64>>,
    next_channel: u128,
}

impl NodeHarness {
    /// A harness with a fresh node and store.
    pub fn new(config: NodeConfig) -> Self {
        let now = Millis(1_000_000);
        Self {
            node: Node::new(Uuid::from_u128(0x5107e), config, now, 42),
            kv: MemoryKv::new(),
            now,
            hold_storage: false,
            manual_credit: false,
            bus_error: None,
            subscribe_error: None,
            hold_subscribes: false,
            published: Vec::new(),
            announcements: Vec::new(),
            publish_attempts: 0,
            bus_calls: Vec::new(),
            refusals: Vec::new(),
            produced: (0, 0),
            released_input: BTreeMap::new(),
            held: VecDeque::new(),
            held_subscribes: VecDeque::new(),
            subscribed: BTreeSet::new(),
            logs: BTreeMap::new(),
            inbox: BTreeMap::new(),
            unacked: BTreeMap::new(),
            next_channel: 0,
        }
    }

    /// Opens a stream with `request` and runs until idle.
    pub fn open(&mut self, request: Request) -> StreamId {
        self.open_envelope(request.into_envelope())
    }

    /// Opens a stream with any envelope.
    pub fn open_envelope(&mut self, envelope: Envelope) -> StreamId {
        self.next_channel += 1;
        let stream = StreamId { conn: 1, channel: Uuid::from_u128(self.next_channel) };
        self.logs.insert(stream, StreamLog::default());
        self.node.handle_request(self.now, stream, envelope);
        self.run();
        stream
    }

    /// Queues a message from the client; it is delivered when the node accepts input.
    pub fn send(&mut self, stream: StreamId, message: Message) {
        self.inbox.entry(stream).or_default().push_back(Inbound::Message(message));
        self.run();
    }

    /// Queues a message the transport failed to decode (delivered like a message, in order).
    pub fn send_undecodable(&mut self, stream: StreamId, error: &str) {
        self.inbox.entry(stream).or_default().push_back(Inbound::Undecodable(error.into()));
        self.run();
    }

    /// Queues the client's end of the stream (after its queued messages).
    pub fn end(&mut self, stream: StreamId, end: StreamEnd) {
        self.inbox.entry(stream).or_default().push_back(Inbound::End(end));
        self.run();
    }

    /// The connection is over its memory budget (see [`Node::handle_pressure`]).
    pub fn pressure(&mut self, stream: StreamId) {
        self.node.handle_pressure(self.now, stream);
        self.run();
    }

    /// The transport loses the stream.
    pub fn abort(&mut self, stream: StreamId) {
        self.inbox.remove(&stream);
        self.node.handle_aborted(self.now, stream);
        self.run();
    }

    /// Gives credit to a stream (with `manual_credit`): the transport took its `frames` oldest
    /// messages, whose footprints come back as byte credit.
    pub fn credit(&mut self, stream: StreamId, frames: u32) {
        let unacked = self.unacked.entry(stream).or_default();
        let bytes = (0..frames).filter_map(|_| unacked.pop_front()).sum();
        self.node.handle_credit(self.now, stream, frames, bytes);
        self.run();
    }

    /// Footprint of the messages of `stream` sent and not yet credited (with `manual_credit`).
    pub fn unacked_bytes(&self, stream: StreamId) -> u64 {
        self.unacked.get(&stream).map_or(0, |u| u.iter().sum())
    }

    /// The log of a stream.
    pub fn log(&self, stream: StreamId) -> &StreamLog {
        &self.logs[&stream]
    }

    /// Number of held storage effects.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The held storage effects, oldest first.
    pub fn held_requests(&self) -> Vec<&StorageOp> {
        self.held.iter().map(|(_, request)| request).collect()
    }

    /// Executes the oldest held storage effect and runs.
    pub fn release_storage(&mut self) {
        if let Some((op, request)) = self.held.pop_front() {
            let result = self.kv.execute(&request);
            self.node.handle_storage(self.now, op, result);
        }
        self.run();
    }

    /// Executes the most recent held storage effect and runs.
    pub fn release_newest_storage(&mut self) {
        if let Some((op, request)) = self.held.pop_back() {
            let result = self.kv.execute(&request);
            self.node.handle_storage(self.now, op, result);
        }
        self.run();
    }

    /// Executes every held storage effect (and those they cause) and runs.
    pub fn release_all(&mut self) {
        let hold = core::mem::replace(&mut self.hold_storage, false);
        while !self.held.is_empty() {
            self.release_storage();
        }
        self.hold_storage = hold;
    }

    /// The bus route of a space of this node's store.
    pub fn route(&self, space: &str) -> String {
        super::segment_notification_route(&self.node.store_id(), space)
    }

    /// Whether this node is subscribed to the route of `space` (its subscribe was acknowledged and it did
    /// not unsubscribe).
    pub fn is_subscribed(&self, space: &str) -> bool {
        self.subscribed.contains(&self.route(space))
    }

    /// Delivers `status` as a notification another server instance published, if this node subscribed
    /// to its space's route (a bus only delivers to subscribers).
    pub fn notify(&mut self, status: SegmentStatus) {
        let route = self.route(&status.space);
        if self.subscribed.contains(&route) {
            let notification = SegmentNotification { store_id: self.node.store_id(), segment_status: status };
            self.node.handle_bus(self.now, BusEvent::Notification { route, notification });
        }
        self.run();
    }

    /// The bus loses the route of `space` (an outage): the node is told with `error`.
    pub fn lose_route(&mut self, space: &str, error: &str) {
        let route = self.route(space);
        if self.subscribed.remove(&route) {
            self.node.handle_bus(self.now, BusEvent::Lost { route, error: error.into() });
        }
        self.run();
    }

    /// Number of held bus subscribes.
    pub fn held_subscribes(&self) -> usize {
        self.held_subscribes.len()
    }

    /// Answers every held bus subscribe (with [`NodeHarness::subscribe_error`] if set) and runs.
    pub fn release_subscribes(&mut self) {
        while let Some((op, route)) = self.held_subscribes.pop_front() {
            self.answer_subscribe(op, route);
        }
        self.run();
    }

    fn answer_subscribe(&mut self, op: OpId, route: String) {
        let result = match self.subscribe_error.clone() {
            Some(error) => Err(error),
            None => {
                self.subscribed.insert(route);
                Ok(())
            }
        };
        self.node.handle_bus(self.now, BusEvent::Subscribed { op, result });
    }

    /// Advances virtual time by `ms`, firing timers on the way.
    pub fn advance(&mut self, ms: u64) {
        let target = self.now + Millis(ms);
        loop {
            self.run();
            match self.node.poll_timeout() {
                Some((at, _)) if at <= target => {
                    self.now = self.now.max(at);
                    self.node.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = target;
        self.node.handle_timeout(self.now);
        self.run();
    }

    /// Processes outputs, deliveries and due timers at the current time (and timers up to 2 ms ahead, so
    /// the millisecond delay of space reads needs no explicit step), until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..1_000_000 {
            if let Some(out) = self.node.poll_output() {
                self.apply(out);
                continue;
            }
            if self.deliver_inbox() {
                continue;
            }
            match self.node.poll_timeout() {
                Some((at, _)) if at <= self.now + Millis(2) => {
                    self.now = self.now.max(at);
                    self.node.handle_timeout(self.now);
                }
                _ => return,
            }
        }
        panic!("node harness: no quiescence after 1,000,000 steps (livelock)");
    }

    fn deliver_inbox(&mut self) -> bool {
        let streams: Vec<StreamId> = self.inbox.keys().copied().collect();
        let mut moved = false;
        for stream in streams {
            let Some(queue) = self.inbox.get_mut(&stream) else { continue };
            match queue.front() {
                Some(Inbound::Message(_)) if self.node.accepts_input(&stream) => {
                    if let Some(Inbound::Message(m)) = queue.pop_front() {
                        self.node.handle_message(self.now, stream, m);
                        moved = true;
                    }
                }
                Some(Inbound::Undecodable(_)) if self.node.accepts_input(&stream) => {
                    if let Some(Inbound::Undecodable(error)) = queue.pop_front() {
                        self.node.handle_bad_message(self.now, stream, error);
                        moved = true;
                    }
                }
                Some(Inbound::End(_)) => {
                    if let Some(Inbound::End(e)) = queue.pop_front() {
                        self.node.handle_end(self.now, stream, e);
                        moved = true;
                    }
                }
                _ => {}
            }
            if self.inbox.get(&stream).is_some_and(VecDeque::is_empty) {
                self.inbox.remove(&stream);
            }
        }
        moved
    }

    fn apply(&mut self, out: NodeOutput) {
        match out {
            NodeOutput::Send { stream, message, charge } => {
                let log = self.logs.entry(stream).or_default();
                assert!(log.closed.is_none(), "message after close on {stream:?}: {message:?}");
                assert_eq!(charge, message.footprint() as u64, "a message is charged its footprint");
                log.sent.push(message);
                if self.manual_credit {
                    self.unacked.entry(stream).or_default().push_back(charge);
                } else {
                    self.node.handle_credit(self.now, stream, 1, charge);
                }
            }
            NodeOutput::Close { stream, error } => {
                let log = self.logs.entry(stream).or_default();
                assert!(log.closed.is_none(), "stream {stream:?} closed twice");
                log.close_text = error.as_ref().map(ToString::to_string);
                log.closed = Some(error);
                self.inbox.remove(&stream);
            }
            NodeOutput::Ready { .. } => {}
            NodeOutput::Refused(refusal) => self.refusals.push(refusal),
            NodeOutput::Produced { records, bytes } => {
                self.produced.0 += records;
                self.produced.1 += bytes;
            }
            NodeOutput::InputReleased { stream, bytes } => {
                *self.released_input.entry(stream).or_default() += bytes;
            }
            NodeOutput::Storage { op, request } => {
                if self.hold_storage {
                    self.held.push_back((op, request));
                } else {
                    let result = self.kv.execute(&request);
                    self.node.handle_storage(self.now, op, result);
                }
            }
            NodeOutput::Bus(BusCommand::Subscribe { op, route }) => {
                self.bus_calls.push(alloc::format!("+{route}"));
                if self.hold_subscribes {
                    self.held_subscribes.push_back((op, route));
                } else {
                    self.answer_subscribe(op, route);
                }
            }
            NodeOutput::Bus(BusCommand::Unsubscribe { route }) => {
                assert!(self.subscribed.remove(&route), "unsubscribe of {route} without a live subscription");
                self.bus_calls.push(alloc::format!("-{route}"));
            }
            NodeOutput::Bus(BusCommand::Publish { op, route, notification }) => {
                self.publish_attempts += 1;
                if let Some(error) = self.bus_error.clone() {
                    self.node.handle_bus(self.now, BusEvent::Published { op, result: Err(error) });
                    return;
                }
                self.published.push(notification.clone());
                if self.subscribed.contains(&route) {
                    self.node.handle_bus(self.now, BusEvent::Notification { route, notification });
                }
                self.node.handle_bus(self.now, BusEvent::Published { op, result: Ok(()) });
            }
            NodeOutput::Bus(BusCommand::Announce { op, route, announcement }) => {
                self.announcements.push(announcement.clone());
                if self.subscribed.contains(&route) {
                    self.node.handle_bus(self.now, BusEvent::Announcement { route, announcement });
                }
                self.node.handle_bus(self.now, BusEvent::Published { op, result: Ok(()) });
            }
        }
    }
}
