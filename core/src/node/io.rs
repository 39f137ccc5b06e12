//! What goes in and out of a store node.

use alloc::format;
use alloc::string::String;
use uuid::Uuid;

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::api::{SegmentNotification, WorkerInfo};
use crate::storage::StorageOp;
use crate::stream::{EndReason, StreamId};
use crate::wire::Message;

/// Identifies one effect (storage or bus operation) so its completion can be routed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// An output of a node; drain with [`Node::poll_output`](super::Node::poll_output) after every input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeOutput {
    /// Send a message on a stream.
    Send {
        /// The stream.
        stream: StreamId,
        /// The message.
        message: Message,
        /// What the message cost the stream's send credit ([`Message::footprint`]): the transport
        /// gives exactly this back once the message left.
        charge: u64,
    },
    /// End the stream: send `mux::close` (with `error` if any) and forget it (Go `closeSendAndRelease`).
    /// The node emits nothing more for this stream and ignores later inputs for it.
    Close {
        /// The stream.
        stream: StreamId,
        /// Why the operation failed, if it did: the text of `{"type":"mux::close","err":...}`.
        error: Option<EndReason>,
    },
    /// The stream accepts input again: deliver its queued messages with
    /// [`Node::handle_message`](super::Node::handle_message) while
    /// [`Node::accepts_input`](super::Node::accepts_input) holds.
    Ready {
        /// The stream.
        stream: StreamId,
    },
    /// Execute a storage operation and report with [`Node::handle_storage`](super::Node::handle_storage).
    Storage {
        /// Correlation id.
        op: OpId,
        /// The operation.
        request: StorageOp,
    },
    /// Execute a bus command; completions and deliveries come back through
    /// [`Node::handle_bus`](super::Node::handle_bus).
    Bus(BusCommand),
    /// A request or record was refused by a limit or a quota (already answered on its stream): for
    /// metrics. Nothing to execute.
    Refused(Refusal),
    /// A producer's chunk was committed and its status sent: `records` records of `bytes` payload
    /// bytes are stored (for metrics). Nothing to execute.
    Produced {
        /// Records committed.
        records: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// The stream's operation let go of `bytes` of [`Message::footprint`] of input it held (a producer's
    /// committed chunk): tell the transport, which counts it against the connection's memory budget.
    InputReleased {
        /// The stream.
        stream: StreamId,
        /// Footprint released.
        bytes: u64,
    },
}

/// Why the node refused a request or a record, for metrics (the client got the text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// A request limit ([`RequestLimits`](crate::limits::RequestLimits)).
    Limit(crate::limits::LimitKind),
    /// A store quota ([`StoreQuotas`](super::quota::StoreQuotas)).
    Quota(super::quota::QuotaKind),
}

impl Refusal {
    /// Every refusal.
    pub fn all() -> impl Iterator<Item = Refusal> {
        let limits = crate::limits::LimitKind::ALL.into_iter().map(Refusal::Limit);
        limits.chain(super::quota::QuotaKind::ALL.into_iter().map(Refusal::Quota))
    }

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Limit(kind) => kind.as_str(),
            Refusal::Quota(kind) => kind.as_str(),
        }
    }
}

/// A message-bus effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusCommand {
    /// Subscribe to a route; answer with [`BusEvent::Subscribed`]. Deliver its messages as
    /// [`BusEvent::Notification`] until [`BusCommand::Unsubscribe`].
    Subscribe {
        /// Correlation id.
        op: OpId,
        /// The route.
        route: String,
    },
    /// Stop delivering a route (issued exactly once per successful subscribe).
    Unsubscribe {
        /// The route.
        route: String,
    },
    /// Publish this instance's workers to the other instances serving the store (cluster-wide worker
    /// presence); answer with [`BusEvent::Published`]. Delivered as [`BusEvent::Announcement`].
    Announce {
        /// Correlation id.
        op: OpId,
        /// The route ([`worker_presence_route`]).
        route: String,
        /// What this instance has.
        announcement: PresenceAnnouncement,
    },
    /// Publish a segment notification; answer with [`BusEvent::Published`].
    Publish {
        /// Correlation id.
        op: OpId,
        /// The route.
        route: String,
        /// The notification.
        notification: SegmentNotification,
    },
}

/// A completion or delivery from the message bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// Result of [`BusCommand::Subscribe`].
    Subscribed {
        /// Correlation id.
        op: OpId,
        /// `Err` with the bus error text.
        result: Result<(), String>,
    },
    /// Result of [`BusCommand::Publish`].
    Published {
        /// Correlation id.
        op: OpId,
        /// `Err` with the bus error text.
        result: Result<(), String>,
    },
    /// A notification delivered on a subscribed route.
    Notification {
        /// The route.
        route: String,
        /// The notification.
        notification: SegmentNotification,
    },
    /// A presence announcement delivered on a subscribed route (including this instance's own).
    Announcement {
        /// The route.
        route: String,
        /// The announcement.
        announcement: PresenceAnnouncement,
    },
    /// Delivery on a subscribed route can no longer be guaranteed (bus outage); subscribers are closed
    /// with `error` and the route counts as unsubscribed.
    Lost {
        /// The route.
        route: String,
        /// Why.
        error: String,
    },
}

/// The workers one server instance holds for a store, published on the bus so that observers connected to
/// any instance see every worker (cluster-wide presence). Bus-only: never on a client stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceAnnouncement {
    /// The announcing instance (random per node).
    pub instance: Uuid,
    /// The store.
    pub store_id: Uuid,
    /// Its workers (empty when its last worker left).
    pub workers: Vec<WorkerInfo>,
    /// Asks every other instance to announce at once (sent by an instance that just joined).
    pub sync: bool,
}

/// What travels on the bus between server instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusMessage {
    /// A segment's new status, after a commit.
    Segment(SegmentNotification),
    /// An instance's workers.
    Presence(PresenceAnnouncement),
}

impl BusMessage {
    /// The event a node receives for this message on `route`.
    pub fn into_event(self, route: String) -> BusEvent {
        match self {
            BusMessage::Segment(notification) => BusEvent::Notification { route, notification },
            BusMessage::Presence(announcement) => BusEvent::Announcement { route, announcement },
        }
    }
}

/// The bus route of a store's worker presence: `tenant.streamkit.worker_presence[<store id>]` (the
/// route Go reserves for it).
pub fn worker_presence_route(store_id: &Uuid) -> String {
    format!("tenant.streamkit.worker_presence[{}]", store_id.hyphenated())
}

/// Namespace of segment-notification route ids (the store id is the UUIDv5 namespace).
const NOTIFICATION_ROUTE: &str = "inbox.streamkit.segment_notification";

/// The bus route of a space's segment notifications:
/// `inbox.streamkit.segment_notification[<UUIDv5(namespace = store id, name = space)>]` (PROTOCOL.md §6.2).
pub fn segment_notification_route(store_id: &Uuid, space: &str) -> String {
    let id = Uuid::new_v5(store_id, space.as_bytes());
    format!("{NOTIFICATION_ROUTE}[{}]", id.hyphenated())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_matches_the_spec_example() {
        let store = Uuid::parse_str("6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b").unwrap();
        assert_eq!(
            segment_notification_route(&store, "space0"),
            "inbox.streamkit.segment_notification[10c8c765-9a9d-5d92-9226-d855e73fdcfe]"
        );
    }
}
