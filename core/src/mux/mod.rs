//! The mux session: one sans-IO state machine per physical connection (PROTOCOL.md §2.5–2.9, §3).
//!
//! A [`MuxSession`] turns inbound frames into per-stream items ([`StreamInput`]) and events
//! ([`MuxEvent`]), and application sends into encoded frames. Logical streams are identified by their
//! channel id; the server role opens a stream when a data frame names an unseen channel (after the
//! per-frame scope check), the client role opens them with [`MuxSession::open_stream`].
//!
//! Stream semantics follow Go's bidi streams: [`MuxSession::close_send`] half-closes (the stream stays
//! registered for receiving), the peer's `mux::close`/`mux::error` ends the receiving side after the
//! items queued before it ([`StreamEnd`]), and a stream is only forgotten by
//! [`MuxSession::release`] (Go `CloseLocal`), [`MuxSession::reject`] or an abort by the session
//! ([`MuxEvent::Aborted`]). A server's "close send and release" is `close_send` then `release`.
//!
//! # Bounds
//!
//! * Inbound: per stream `stream_queue_messages` / `stream_queue_bytes`, per connection
//!   `connection_queue_bytes`. With [`OverloadPolicy::Close`], a stream over its bound (or the largest
//!   stream when the connection is over its bound) is aborted with `stream receive buffer overloaded`,
//!   the peer gets an `error` frame and the channel is tombstoned; no other stream is affected. With
//!   [`OverloadPolicy::Wait`], nothing is aborted: [`MuxSession::is_backlogged`] says so and the driver
//!   stops reading the socket until the application drained the queues (every stream then waits).
//! * Outbound data: bounded by the application. Every data frame taken by `poll_transmit` is reported
//!   in [`MuxEvent::Sent`]; an application that keeps at most N unsent frames per stream (send credit)
//!   bounds the outbound memory. Data frames are taken round-robin across streams.
//! * Outbound control frames (pong, ping, `error`, `close`): pings and pongs are coalesced, `error`
//!   frames are capped at [`MAX_QUEUED_CONTROL_FRAMES`] (then the session shuts down).
//! * Tombstones: `tombstone_capacity`, pruned by age and oldest-first.
//! * Events: at most one `Readable` per stream is pending; the rest is produced by inputs and drained
//!   after every input.
//!
//! # Driver loop
//!
//! Every input (`handle_*` or an application call) must be followed by draining `poll_event`; frames
//! are pulled with `poll_transmit` whenever the socket accepts writes; the timer is re-armed from
//! `poll_timeout`, which returns "now" while events are waiting (not for transmits: a socket that is
//! not writable must not turn the timer into a busy loop). Canonical adapter loop:
//!
//! ```text
//! let mut mux = MuxSession::new(role, codec, MuxConfig::default(), clock.now(), seed_from_os());
//! loop {
//!     // 1. Exactly one input.
//!     select! {
//!         frame = socket.read()     => match frame {
//!             Ok(bytes) => mux.handle_frame(clock.now(), &bytes),
//!             Err(e)    => mux.handle_transport_closed(clock.now(), &e.to_string()),
//!         },
//!         () = timer.sleep_until(deadline) => mux.handle_timeout(clock.now()),
//!         cmd = app_commands.recv() => apply(&mut mux, cmd),  // open_stream / send / close_send / release / reject
//!     }
//!     // 2. Drain events (this may issue further application calls).
//!     while let Some(event) = mux.poll_event() {
//!         match event {
//!             MuxEvent::Opened { channel, store_id } => start_handler(channel, store_id),
//!             MuxEvent::Readable { channel } => while let Some(item) = mux.recv(channel) { deliver(channel, item) },
//!             MuxEvent::Sent { channel, frames, .. } => add_send_credit(channel, frames),
//!             MuxEvent::Aborted { channel, reason } => fail_handler(channel, reason),
//!             MuxEvent::Shutdown { .. } => closing = true,
//!         }
//!     }
//!     // 3. Write what the socket accepts, flush once (not per frame).
//!     while socket.can_write() {
//!         let Some(frame) = mux.poll_transmit() else { break };
//!         socket.feed(frame, if codec.is_binary() { Binary } else { Text });
//!     }
//!     socket.flush();
//!     // 4. Taking data frames produced `Sent` events: poll_timeout is then "now" and step 2 runs again.
//!     if closing && !mux.has_transmit() { socket.close(); break; }
//!     deadline = mux.poll_timeout().map(|(at, _reason)| at);
//! }
//! ```
//!
//! The same loop, synchronously, for a client and a server session wired back to back:
//!
//! ```
//! use streamkit_proto::auth::StoreScopes;
//! use streamkit_proto::mux::{MuxConfig, MuxEvent, MuxSession, Role, StreamEnd, StreamInput};
//! use streamkit_proto::wire::Codec;
//! use streamkit_proto::Millis;
//!
//! let now = Millis(0);
//! let mut client = MuxSession::new(Role::Client, Codec::Json, MuxConfig::default(), now, 1);
//! let server_role = Role::Server { scopes: StoreScopes::All };
//! let mut server = MuxSession::new(server_role, Codec::Json, MuxConfig::default(), now, 2);
//!
//! let store = uuid::Uuid::from_u128(7);
//! let channel = client.open_stream(now, store, b"request".to_vec()).unwrap();
//! client.close_send(now, channel, None).unwrap();
//! while let Some(frame) = client.poll_transmit() {
//!     server.handle_frame(now, &frame);
//! }
//! assert_eq!(server.poll_event(), Some(MuxEvent::Opened { channel, store_id: store }));
//! assert_eq!(server.poll_event(), Some(MuxEvent::Readable { channel }));
//! assert_eq!(server.recv(channel), Some(StreamInput::Payload(b"request".to_vec())));
//! assert_eq!(server.recv(channel), Some(StreamInput::End(StreamEnd::Finished)));
//! // Answer, close our side, and forget the stream ("close send and release").
//! server.send(now, channel, b"answer".to_vec()).unwrap();
//! server.close_send(now, channel, None).unwrap();
//! server.release(channel);
//! while let Some(frame) = server.poll_transmit() {
//!     client.handle_frame(now, &frame);
//! }
//! while client.poll_event().is_some() {}
//! assert_eq!(client.recv(channel), Some(StreamInput::Payload(b"answer".to_vec())));
//! assert_eq!(client.recv(channel), Some(StreamInput::End(StreamEnd::Finished)));
//! client.release(channel);
//! assert_eq!(client.stream_count(), 0);
//! ```

mod config;
mod error;
mod event;
mod outbound;
mod session;
mod stream;
mod tombstones;

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
#[cfg(test)]
mod tests;

pub use config::{
    DEFAULT_CONNECTION_QUEUE_BYTES, DEFAULT_STREAM_QUEUE_BYTES, DEFAULT_STREAM_QUEUE_MESSAGES,
    DEFAULT_TOMBSTONE_CAPACITY, MAX_QUEUED_CONTROL_FRAMES, MuxConfig, OverloadPolicy, Role,
};
pub use error::MuxError;
pub use event::{EndReason, MuxEvent, StreamEnd, StreamInput, TimeoutReason};
pub use session::{MuxCounters, MuxSession, StreamInfo};
