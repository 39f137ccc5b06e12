//! The client role over a socket: a client-role mux session plus the codec work, so the SDK deals only in
//! typed requests and messages, on any runtime.
//!
//! Each operation is one logical stream: [`ClientConnection::open`] sends the request envelope; the
//! answers are decoded with the kind the request implies ([`Request::outbound_kind`]) and pulled per
//! stream with [`ClientConnection::recv`] when the application wants them (the mux queue bounds what waits).
//! Stream ends map to the Go texts: a clean `mux::close` is the end of the stream, `mux::close` with an
//! error is `remote closed stream: X`, an `error` frame is `remote error: X`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use uuid::Uuid;

use crate::api::Request;
use crate::mux::{MuxConfig, MuxError, MuxEvent, MuxSession, Role, StreamInput, TimeoutReason};
use crate::stream::{EndReason, StreamEnd};
use crate::time::Millis;
use crate::wire::{Codec, Message, MessageKind};

/// One item of an operation's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientItem {
    /// A decoded answer.
    Message(Message),
    /// An answer that could not be decoded (the operation should fail with this text).
    Invalid(String),
    /// The server ended the stream.
    End(StreamEnd),
}

/// Connection-level events for the SDK's driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Items are waiting on a stream: pull them with [`ClientConnection::recv`].
    Readable {
        /// The stream.
        channel: Uuid,
    },
    /// `frames` messages of the stream were handed to the transport (send credit for producers).
    Sent {
        /// The stream.
        channel: Uuid,
        /// Number of frames.
        frames: u32,
    },
    /// The stream was torn down locally (connection lost, overload); the operation fails with `reason`.
    Aborted {
        /// The stream.
        channel: Uuid,
        /// Why.
        reason: EndReason,
    },
    /// The connection is over; every stream was aborted first.
    Shutdown {
        /// Why.
        reason: EndReason,
    },
}

/// A client connection; see the [module](self) docs.
pub struct ClientConnection {
    mux: MuxSession,
    kinds: BTreeMap<Uuid, MessageKind>,
}

impl ClientConnection {
    /// A client connection speaking `codec`; `seed` drives channel ids and heartbeat jitter.
    pub fn new(codec: Codec, config: MuxConfig, now: Millis, seed: u64) -> Self {
        Self { mux: MuxSession::new(Role::Client, codec, config, now, seed), kinds: BTreeMap::new() }
    }

    /// The mux session (read-only).
    pub fn mux(&self) -> &MuxSession {
        &self.mux
    }

    /// Whether the connection is over.
    pub fn is_shut_down(&self) -> bool {
        self.mux.is_shut_down()
    }

    /// Opens an operation on `store`: a new stream whose first message is the request's envelope.
    pub fn open(&mut self, now: Millis, store: Uuid, request: Request) -> Result<Uuid, MuxError> {
        let kind = request.outbound_kind();
        let payload = self.mux.codec().encode_value(&request.into_envelope());
        let channel = self.mux.open_stream(now, store, payload)?;
        self.kinds.insert(channel, kind);
        Ok(channel)
    }

    /// Sends a later message (records of a produce, presence renewals).
    pub fn send(&mut self, now: Millis, channel: Uuid, message: &Message) -> Result<(), MuxError> {
        let payload = self.mux.codec().encode_message(message);
        self.mux.send(now, channel, payload)
    }

    /// Ends what this side sends (`mux::close`, with `err` if the source failed).
    pub fn close_send(&mut self, now: Millis, channel: Uuid, err: Option<&str>) -> Result<(), MuxError> {
        self.mux.close_send(now, channel, err)
    }

    /// Forgets a finished stream.
    pub fn release(&mut self, channel: Uuid) {
        self.kinds.remove(&channel);
        self.mux.release(channel);
    }

    /// Gives an operation up: `mux::close` with the text of `reason` (Go's client sends
    /// `context canceled`, [`EndReason::Canceled`], when the caller cancels), then forgets it.
    pub fn cancel(&mut self, now: Millis, channel: Uuid, reason: &EndReason) {
        let _ = self.mux.close_send(now, channel, Some(&reason.to_string()));
        self.release(channel);
    }

    /// The next item of a stream, decoded.
    pub fn recv(&mut self, channel: Uuid) -> Option<ClientItem> {
        let kind = *self.kinds.get(&channel)?;
        Some(match self.mux.recv(channel)? {
            StreamInput::End(end) => ClientItem::End(end),
            StreamInput::Payload(bytes) => match self.mux.codec().decode_message_bytes(kind, bytes.into()) {
                Ok(message) => ClientItem::Message(message),
                Err(e) => ClientItem::Invalid(format!("{e}")),
            },
        })
    }

    /// A frame arrived.
    pub fn handle_frame(&mut self, now: Millis, bytes: &[u8]) {
        self.mux.handle_frame(now, bytes);
    }

    /// Timers are due.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.mux.handle_timeout(now);
    }

    /// The socket closed or failed.
    pub fn handle_transport_closed(&mut self, now: Millis, reason: EndReason) {
        self.mux.handle_transport_closed(now, reason);
    }

    /// Closes the connection: a `close` frame, every stream aborted.
    pub fn shutdown(&mut self, now: Millis, reason: EndReason) {
        self.mux.shutdown(now, reason);
    }

    /// The next connection event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        loop {
            let event = match self.mux.poll_event()? {
                MuxEvent::Readable { channel } => ClientEvent::Readable { channel },
                MuxEvent::Sent { channel, frames, .. } => ClientEvent::Sent { channel, frames },
                MuxEvent::Aborted { channel, reason } => {
                    self.kinds.remove(&channel);
                    ClientEvent::Aborted { channel, reason }
                }
                MuxEvent::Shutdown { reason } => ClientEvent::Shutdown { reason },
                // Client sessions never see peer-opened streams.
                MuxEvent::Opened { .. } => continue,
            };
            return Some(event);
        }
    }

    /// The next encoded frame to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.mux.poll_transmit()
    }

    /// Whether frames are waiting to be written.
    pub fn has_transmit(&self) -> bool {
        self.mux.has_transmit()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Option<(Millis, TimeoutReason)> {
        self.mux.poll_timeout()
    }
}
