//! The server side: connections and the engine, as two kinds of state machines that exchange typed
//! messages.
//!
//! ```text
//!  socket ⇄ [ServerConnection: mux + codec]  ⇄ EngineInput / EngineOutput ⇄  [Engine: manager + nodes]
//!                                                                                ⇅ storage / bus effects
//! ```
//!
//! A [`ServerConnection`] owns one physical connection's mux session: it decodes frames and inner messages
//! and encodes the answers, so codec work happens per connection (adapters run each connection on its own
//! task). The [`Engine`] owns the stores' nodes and sees only typed messages, from socket connections and
//! from in-process clients alike.
//!
//! Flow control between the two is credit based in both directions:
//! * **inbound**: a connection forwards at most [`INPUT_WINDOW`] messages of a stream that the engine has
//!   not yet acknowledged with [`EngineOutput::InputCredit`]; the rest wait in the mux's bounded queue.
//!   The engine acknowledges a message once the stream's operation has taken it, and the message's
//!   bytes once the operation let go of it (a producer: when its chunk is committed), so the
//!   connection knows how much of its input the engine holds (see [`ServerConnection`]'s memory
//!   budget).
//! * **outbound**: the engine sends on a stream only while it has send credit, counted in messages and
//!   in bytes ([`Message::footprint`]); connections return it with [`EngineInput::Credit`] as the
//!   transport takes frames.

mod activity;
mod connection;
mod engine;
#[cfg(test)]
mod tests;

pub use activity::{EngineStats, Operation, Outcome, StreamKind};
pub use connection::{ConnectionConfig, DEFAULT_MEMORY_BUDGET, MAX_STARTING, ServerConnection};
pub use engine::{Engine, EngineConfig, EngineEffect};

use alloc::string::String;
use uuid::Uuid;

use crate::api::Envelope;
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::wire::Message;

/// Messages of a stream a connection may forward before the engine acknowledges them.
pub const INPUT_WINDOW: u32 = 256;

/// Which of `shards` engines owns `store` (0 when `shards` is 0 or 1).
///
/// A server may run several independent [`Engine`]s, each owning the nodes of a share of the stores;
/// every input of a stream goes to the engine of its store ([`ServerConnection::poll_engine_input`]
/// says which store that is). The store id is mixed ([`mix64`](crate::rand::mix64)) before the
/// modulo, so stores with sequential ids still spread evenly.
pub fn shard_of(store: &Uuid, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let id = store.as_u128();
    let mixed = crate::rand::mix64((id as u64) ^ ((id >> 64) as u64));
    (mixed % shards as u64) as usize
}

/// From a connection (or an in-process client) to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineInput {
    /// A new stream for `store`; `request` is its first message (or why it could not be decoded).
    Open {
        /// The stream.
        stream: StreamId,
        /// Store named by the opening frame (already authorized by the connection).
        store: Uuid,
        /// The decoded envelope, or the decode error text.
        request: Result<Envelope, String>,
        /// What the request counts against the connection's memory budget
        /// ([`envelope_footprint`](crate::wire::envelope_footprint); 0 when nothing is charged): the
        /// engine gives exactly this back in [`EngineOutput::InputCredit`] once the request started.
        charge: u64,
    },
    /// A later message of the stream.
    Message {
        /// The stream.
        stream: StreamId,
        /// The message.
        message: Message,
        /// What it counts against the connection's memory budget ([`Message::footprint`]; 0 when
        /// nothing is charged): the engine gives exactly this back in [`EngineOutput::InputCredit`]
        /// once released.
        charge: u64,
    },
    /// A later message that could not be decoded; the operation fails with this text.
    Invalid {
        /// The stream.
        stream: StreamId,
        /// The decode error.
        error: String,
    },
    /// The peer ended its side of the stream.
    End {
        /// The stream.
        stream: StreamId,
        /// How.
        end: StreamEnd,
    },
    /// The stream is gone (connection closed, overload); nothing more can be sent on it.
    Aborted {
        /// The stream.
        stream: StreamId,
    },
    /// The connection is over its memory budget and this stream holds input in the engine: release
    /// it as soon as possible (a producer commits the records it has instead of waiting for a full
    /// chunk).
    Pressure {
        /// The stream.
        stream: StreamId,
    },
    /// The transport took `frames` messages of the stream, of [`Message::footprint`] `bytes` in all.
    Credit {
        /// The stream.
        stream: StreamId,
        /// Number of messages.
        frames: u32,
        /// Their footprints, summed.
        bytes: u64,
    },
}

impl EngineInput {
    /// The stream this input is about.
    pub fn stream(&self) -> StreamId {
        match self {
            EngineInput::Open { stream, .. }
            | EngineInput::Message { stream, .. }
            | EngineInput::Invalid { stream, .. }
            | EngineInput::End { stream, .. }
            | EngineInput::Aborted { stream }
            | EngineInput::Pressure { stream }
            | EngineInput::Credit { stream, .. } => *stream,
        }
    }
}

/// From the engine to the connection (or in-process client) that owns the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineOutput {
    /// Send a message on the stream.
    Send {
        /// The stream.
        stream: StreamId,
        /// The message.
        message: Message,
        /// Its cost to the stream's send credit, given back in [`EngineInput::Credit`] once sent.
        charge: u64,
    },
    /// End the stream with `mux::close` (and `error` if any), then forget it.
    Close {
        /// The stream.
        stream: StreamId,
        /// Why, if the operation failed: its text goes in the `mux::close`.
        error: Option<EndReason>,
    },
    /// Refuse the stream with an `error` control frame (`mux::error`), e.g. `store unavailable`.
    Reject {
        /// The stream.
        stream: StreamId,
        /// Why: its text goes in the `mux::error`.
        error: EndReason,
    },
    /// The engine took `messages` more messages of the stream (the connection may forward that many
    /// more), and released `bytes` of [`Message::footprint`] of the stream's input. Most operations
    /// release a message when they take it; a producer holds its records until their chunk is
    /// committed, so its bytes come back later, with `messages: 0`.
    InputCredit {
        /// The stream.
        stream: StreamId,
        /// Number of messages.
        messages: u32,
        /// Footprint released.
        bytes: u64,
    },
}

impl EngineOutput {
    /// The stream this output is about (its `conn` routes it to a connection).
    pub fn stream(&self) -> StreamId {
        match self {
            EngineOutput::Send { stream, .. }
            | EngineOutput::Close { stream, .. }
            | EngineOutput::Reject { stream, .. }
            | EngineOutput::InputCredit { stream, .. } => *stream,
        }
    }
}
