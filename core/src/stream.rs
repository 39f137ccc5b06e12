//! Vocabulary shared by every side of a logical stream (mux sessions, the store engine, client
//! operations, in-process transports).

use alloc::string::String;
use core::fmt;
use uuid::Uuid;

/// How the peer ended its sending side of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// A clean `mux::close` (end of stream).
    Finished,
    /// The stream ended with an error: [`EndReason::RemoteClosed`] or [`EndReason::RemoteError`] for
    /// the peer's word, or a local reason such as [`EndReason::MuxerClosed`].
    Failed(EndReason),
}

impl StreamEnd {
    /// The reason, if the stream failed.
    pub fn error(&self) -> Option<&EndReason> {
        match self {
            StreamEnd::Finished => None,
            StreamEnd::Failed(e) => Some(e),
        }
    }
}

/// Why a logical stream or a whole connection ended.
///
/// Code decides on the variant, never on a text; [`Display`](fmt::Display) writes the exact text the
/// Go original uses for the same condition, so frames, logs and client errors read as Go's do and Go
/// clients that match on texts keep working. Conditions nobody decides on (a sequence gap, a storage
/// failure) are [`EndReason::Failed`] with their text.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The peer closed the stream with an error (`mux::close` with `err`): `remote closed stream: X`.
    RemoteClosed(String),
    /// The peer failed the stream (`mux::error`): `remote error: X`.
    RemoteError(String),
    /// A `mux::` stream-control type this side does not know: `unknown error type "K": X`.
    UnknownControl {
        /// The control type.
        kind: String,
        /// Its `err` text.
        err: String,
    },
    /// The connection is closed (a received `close` frame, a clean disconnect): `muxer closed`.
    MuxerClosed,
    /// The peer stayed silent longer than the idle timeout: `heartbeat timeout`.
    HeartbeatTimeout,
    /// An inbound frame was over the frame limit: `frame payload size exceeds limit`.
    FrameTooLarge,
    /// A payload was over the payload limit: `muxer payload too large`.
    PayloadTooLarge,
    /// An inbound frame did not decode; the text says why.
    Malformed(String),
    /// A stream's inbound queue overflowed: `stream receive buffer overloaded`.
    Overloaded,
    /// Too many control frames were waiting to be written: `muxer write queue overloaded`.
    ControlOverloaded,
    /// A frame for a store the connection's token does not grant: `access denied`.
    AccessDenied,
    /// The connection has its maximum of streams open: `too many active streams`.
    TooManyStreams,
    /// The connection's token expired: `token expired`.
    TokenExpired,
    /// The connection's output outgrew its memory budget: `connection memory budget exceeded`.
    MemoryBudgetExceeded,
    /// The server is shutting down: `server shutting down`.
    ShuttingDown,
    /// The operation was cancelled by its owner: `context canceled` (Go's `context.Canceled`).
    Canceled,
    /// The client was closed: `client closed`.
    ClientClosed,
    /// The store could not be opened: `store unavailable`.
    StoreUnavailable,
    /// The store's node was closed (eviction, removal, shutdown): `store closed`.
    StoreClosed,
    /// The store was removed while the request waited for it to open: `store removed`.
    StoreRemoved,
    /// The node manager is closed: `node manager closed`.
    ManagerClosed,
    /// The socket failed; the text is the transport's error.
    Transport(String),
    /// The operation failed; the text says why (e.g. `sequence gap: expected 3, got 4`).
    Failed(String),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            EndReason::RemoteClosed(err) => return write!(f, "remote closed stream: {err}"),
            EndReason::RemoteError(err) => return write!(f, "remote error: {err}"),
            EndReason::UnknownControl { kind, err } => {
                return write!(f, "unknown error type \"{kind}\": {err}");
            }
            EndReason::Malformed(text) | EndReason::Transport(text) | EndReason::Failed(text) => text,
            EndReason::MuxerClosed => "muxer closed",
            EndReason::HeartbeatTimeout => "heartbeat timeout",
            EndReason::FrameTooLarge => "frame payload size exceeds limit",
            EndReason::PayloadTooLarge => "muxer payload too large",
            EndReason::Overloaded => "stream receive buffer overloaded",
            EndReason::ControlOverloaded => "muxer write queue overloaded",
            EndReason::AccessDenied => "access denied",
            EndReason::TooManyStreams => "too many active streams",
            EndReason::TokenExpired => "token expired",
            EndReason::MemoryBudgetExceeded => "connection memory budget exceeded",
            EndReason::ShuttingDown => "server shutting down",
            EndReason::Canceled => "context canceled",
            EndReason::ClientClosed => "client closed",
            EndReason::StoreUnavailable => "store unavailable",
            EndReason::StoreClosed => "store closed",
            EndReason::StoreRemoved => "store removed",
            EndReason::ManagerClosed => "node manager closed",
        };
        f.write_str(text)
    }
}

/// An operation failure with its text ([`EndReason::Failed`]).
impl From<String> for EndReason {
    fn from(text: String) -> Self {
        EndReason::Failed(text)
    }
}

/// An operation failure with its text ([`EndReason::Failed`]).
impl From<&str> for EndReason {
    fn from(text: &str) -> Self {
        EndReason::Failed(text.into())
    }
}

/// Identifies a logical stream across a whole server: the connection it arrived on (an id the driver
/// assigns) and its channel id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Connection id, unique within the driver.
    pub conn: u64,
    /// Channel id of the logical stream.
    pub channel: Uuid,
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::EndReason;

    /// The texts are a contract: Go clients and operators match on them.
    #[test]
    fn every_reason_displays_the_go_text() {
        let cases = [
            (EndReason::RemoteClosed("boom".into()), "remote closed stream: boom"),
            (EndReason::RemoteError("oops".into()), "remote error: oops"),
            (
                EndReason::UnknownControl { kind: "mux::weird".into(), err: "x".into() },
                "unknown error type \"mux::weird\": x",
            ),
            (EndReason::MuxerClosed, "muxer closed"),
            (EndReason::HeartbeatTimeout, "heartbeat timeout"),
            (EndReason::FrameTooLarge, "frame payload size exceeds limit"),
            (EndReason::PayloadTooLarge, "muxer payload too large"),
            (EndReason::Malformed("malformed message: eof".into()), "malformed message: eof"),
            (EndReason::Overloaded, "stream receive buffer overloaded"),
            (EndReason::ControlOverloaded, "muxer write queue overloaded"),
            (EndReason::AccessDenied, "access denied"),
            (EndReason::TooManyStreams, "too many active streams"),
            (EndReason::TokenExpired, "token expired"),
            (EndReason::MemoryBudgetExceeded, "connection memory budget exceeded"),
            (EndReason::ShuttingDown, "server shutting down"),
            (EndReason::Canceled, "context canceled"),
            (EndReason::ClientClosed, "client closed"),
            (EndReason::StoreUnavailable, "store unavailable"),
            (EndReason::StoreClosed, "store closed"),
            (EndReason::StoreRemoved, "store removed"),
            (EndReason::ManagerClosed, "node manager closed"),
            (EndReason::Transport("connection reset by peer".into()), "connection reset by peer"),
            (EndReason::from("sequence gap: expected 3, got 4"), "sequence gap: expected 3, got 4"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text, "{reason:?}");
        }
    }
}
