//! Configuration of a mux session and the role it plays on its connection.

use crate::auth::StoreScopes;
use crate::time::Millis;
use crate::wire::Limits;

/// Default per-stream bound on queued inbound items (Go's per-stream receive buffer and ingress backlog).
pub const DEFAULT_STREAM_QUEUE_MESSAGES: usize = 8192;
/// Default per-stream bound on queued inbound payload bytes.
pub const DEFAULT_STREAM_QUEUE_BYTES: usize = 16 << 20;
/// Default bound on queued inbound payload bytes over all streams of a connection.
pub const DEFAULT_CONNECTION_QUEUE_BYTES: usize = 64 << 20;
/// Default number of tombstones kept (Go `maxTombstones`).
pub const DEFAULT_TOMBSTONE_CAPACITY: usize = 1024;

/// Bound on control frames (pong, ping, `error`) waiting for `poll_transmit`.
///
/// Control frames are produced by the peer's behaviour (pings, denied frames, streams over the cap), not
/// by our application, so no send credit limits them. A peer that keeps provoking them without reading
/// what we write would grow this queue forever; past this many frames (Go's write-queue size) the session
/// shuts down with [`EndReason::ControlOverloaded`](crate::stream::EndReason::ControlOverloaded) instead.
pub const MAX_QUEUED_CONTROL_FRAMES: usize = 8192;

/// What a session does when a stream's inbound queue (or the connection's) is over its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverloadPolicy {
    /// Keep every stream: the session reports itself backlogged
    /// ([`MuxSession::is_backlogged`](super::MuxSession::is_backlogged)) and the driver stops reading
    /// the socket until the queues drain, so a fast peer is slowed down by TCP (Go's default `wait`).
    Wait,
    /// Abort the overflowing stream at once with `stream receive buffer overloaded` (what a client
    /// session does with a peer that sends more than it reads).
    #[default]
    Close,
    /// Go's server `close` policy: wait like [`OverloadPolicy::Wait`], but a stream whose inbound
    /// queue stays over its bound for `threshold + 1` consecutive periods of `timeout` (Go: 3 and
    /// 100 ms, so 400 ms) without the application taking anything is aborted with
    /// `stream receive buffer overloaded` (an `error` frame, the channel tombstoned); so is the
    /// largest stream while the whole connection stays over its bound that long. Reading then
    /// resumes for the other streams.
    WaitThenClose {
        /// One offer timeout (Go: 100 ms).
        timeout: Millis,
        /// Timeouts tolerated before the stream is closed (Go: 3).
        threshold: u32,
    },
}

impl OverloadPolicy {
    /// Go's server `close` policy: 3 timeouts of 100 ms tolerated.
    pub const GO_CLOSE: OverloadPolicy = OverloadPolicy::WaitThenClose { timeout: Millis(100), threshold: 3 };

    /// Whether a stream over its bound is kept for now (the driver pauses its reads meanwhile).
    pub fn waits(self) -> bool {
        !matches!(self, OverloadPolicy::Close)
    }

    /// How long a stream may stay over its bound before it is closed, if it ever is.
    pub fn patience(self) -> Option<Millis> {
        match self {
            OverloadPolicy::WaitThenClose { timeout, threshold } => {
                Some(Millis(timeout.as_u64().saturating_mul(u64::from(threshold) + 1)))
            }
            OverloadPolicy::Wait | OverloadPolicy::Close => None,
        }
    }
}

/// Tunables of a [`MuxSession`](super::MuxSession). [`Default`] gives Go's defaults (PROTOCOL.md §2.8, §2.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MuxConfig {
    /// Frame and payload size limits (8 MiB / 6 MiB).
    pub limits: Limits,
    /// Base heartbeat period (30 s). [`Millis::ZERO`] disables heartbeats and the idle timeout.
    pub heartbeat_interval: Millis,
    /// Each heartbeat wait is `heartbeat_interval - U[0, heartbeat_jitter)` (5 s), drawn from the seeded
    /// generator, so many connections do not ping in lock-step.
    pub heartbeat_jitter: Millis,
    /// A heartbeat that finds no inbound frame for longer than this (90 s) shuts the session down with
    /// `heartbeat timeout`.
    pub idle_timeout: Millis,
    /// Server role: maximum registered streams; 0 means unlimited (Go's default).
    pub max_streams: usize,
    /// Per stream: maximum queued inbound payloads (8192). The end-of-stream marker is not counted.
    pub stream_queue_messages: usize,
    /// Per stream: maximum queued inbound payload bytes (16 MiB).
    pub stream_queue_bytes: usize,
    /// Whole connection: maximum queued inbound payload bytes over all streams (64 MiB).
    pub connection_queue_bytes: usize,
    /// Maximum tombstones kept (1024); the oldest are pruned first. 0 disables tombstones.
    pub tombstone_capacity: usize,
    /// Age after which a tombstone is forgotten (60 s).
    pub tombstone_ttl: Millis,
    /// What happens when an inbound bound is exceeded ([`OverloadPolicy::Close`] by default; servers
    /// use [`OverloadPolicy::Wait`] and pause their socket reads).
    pub overload: OverloadPolicy,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            heartbeat_interval: Millis::from_secs(30),
            heartbeat_jitter: Millis::from_secs(5),
            idle_timeout: Millis::from_secs(90),
            max_streams: 0,
            stream_queue_messages: DEFAULT_STREAM_QUEUE_MESSAGES,
            stream_queue_bytes: DEFAULT_STREAM_QUEUE_BYTES,
            connection_queue_bytes: DEFAULT_CONNECTION_QUEUE_BYTES,
            tombstone_capacity: DEFAULT_TOMBSTONE_CAPACITY,
            tombstone_ttl: Millis::from_secs(60),
            overload: OverloadPolicy::Close,
        }
    }
}

/// Which end of the connection a session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts streams opened by the peer; every data frame is checked against `scopes` (PROTOCOL.md §3).
    Server {
        /// Stores the connection's token may access.
        scopes: StoreScopes,
    },
    /// Opens streams with [`MuxSession::open_stream`](super::MuxSession::open_stream); frames for unknown
    /// channels are dropped.
    Client,
}

impl Role {
    /// Whether this is the server role.
    pub fn is_server(&self) -> bool {
        matches!(self, Role::Server { .. })
    }
}
