//! What a mux session hands to its application: stream items, events and timer reasons.

use alloc::vec::Vec;
use uuid::Uuid;

use crate::wire::StreamControl;

/// One inbound item of a logical stream, popped with [`MuxSession::recv`](super::MuxSession::recv).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamInput {
    /// An inner message, in the order the peer sent it.
    Payload(Vec<u8>),
    /// The peer ended its side of the stream; nothing follows. The stream stays registered (the
    /// application may still send) until it is released.
    End(StreamEnd),
}

pub use crate::stream::{EndReason, StreamEnd};

impl StreamEnd {
    /// The end a received stream-control object means for the reader.
    pub fn from_control(control: StreamControl) -> Self {
        match control.into_reader_error() {
            None => StreamEnd::Finished,
            Some(reason) => StreamEnd::Failed(reason),
        }
    }
}

/// An event for the application, drained with [`MuxSession::poll_event`](super::MuxSession::poll_event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxEvent {
    /// Server role: a data frame with an unseen channel id opened a stream. Its payload (the request
    /// envelope) is the stream's first queued item; a [`MuxEvent::Readable`] follows.
    Opened {
        /// The new stream.
        channel: Uuid,
        /// The store named by the opening frame.
        store_id: Uuid,
    },
    /// The stream's inbound queue became non-empty: call `recv` until it returns `None`. Not repeated
    /// while an earlier `Readable` for the same stream is still waiting in `poll_event`.
    Readable {
        /// The stream.
        channel: Uuid,
    },
    /// `frames` data frames of the stream (payloads and its `mux::close`) were taken by `poll_transmit`
    /// since the last `Sent`. Applications use it as send credit to bound outbound memory.
    Sent {
        /// The stream.
        channel: Uuid,
        /// Number of frames, aggregated since the previous `Sent` of this stream.
        frames: u32,
        /// Sum of the charges those frames were sent with
        /// ([`MuxSession::send_charged`](super::MuxSession::send_charged); 0 for plain sends): byte
        /// credit in the application's own unit.
        charge: u64,
    },
    /// The session tore the stream down (overload, connection shutdown or timeout). The stream is
    /// already forgotten: no further event or item refers to it.
    Aborted {
        /// The stream.
        channel: Uuid,
        /// Why, e.g. `stream receive buffer overloaded`, `muxer closed`, `heartbeat timeout`.
        reason: EndReason,
    },
    /// The connection is over (emitted once, after the `Aborted` of every stream). The adapter writes
    /// what `poll_transmit` still yields, then closes the socket.
    Shutdown {
        /// Why the session shut down.
        reason: EndReason,
    },
}

/// Why [`MuxSession::poll_timeout`](super::MuxSession::poll_timeout) asks to be woken (for debugging
/// busy loops).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutReason {
    /// The next heartbeat: send a ping, or shut down when the peer has been silent too long.
    Heartbeat,
    /// Events are waiting in `poll_event`: the deadline is "now".
    PendingEvents,
    /// The connection's token expires (server connections,
    /// [`ServerConnection::set_token_expiry`](crate::server::ServerConnection::set_token_expiry)).
    TokenExpiry,
    /// A stream (or the connection) has been over its inbound bound since a while: with
    /// [`OverloadPolicy::WaitThenClose`](super::OverloadPolicy::WaitThenClose), it is closed then.
    Overload,
}
