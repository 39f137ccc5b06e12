//! The client's error type: a kind to match on and the exact text a Go client would show.

use std::fmt;
use std::sync::Arc;

use streamkit_proto::stream::EndReason;

use crate::ws::DialError;

/// Text of a consume entry that is not a stored entry (Go `invalid consume entry payload`).
pub const INVALID_ENTRY: &str = "invalid consume entry payload";
/// Text when a publish got no status back (Go).
pub const NO_STATUS_CONFIRMATION: &str = "no status confirmation from server";
/// Text of a lease that could not be acquired (Go `ErrLeaseNotAcquired`).
pub const LEASE_NOT_ACQUIRED: &str = "lease not acquired";
/// Text when a held lease could not be renewed (another holder took it, or it expired).
pub const LEASE_LOST: &str = "lease lost";
/// Text when a subscription or worker stream saw no frame for three heartbeat intervals.
pub const HEARTBEAT_MISSED: &str = "subscription heartbeat timeout";

/// What went wrong, for matching; the [`Error`]'s text carries the details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A produce's records did not carry the segment's next sequence (optimistic concurrency: another
    /// writer got there first): `remote closed stream: sequence gap: expected 3, got 4`. Read the head
    /// again (`peek`) and retry from `expected`.
    SequenceConflict {
        /// The sequence the segment expected next.
        expected: u64,
        /// The sequence the record carried.
        got: u64,
    },
    /// The token does not allow this store: `remote error: access denied`. Permanent.
    AccessDenied,
    /// The server could not open the store (storage failing, the store's circuit open):
    /// `remote error: store unavailable`. Transient.
    StoreUnavailable,
    /// The server ended the stream with another error: `remote closed stream: <text>`.
    RemoteClosed,
    /// The server refused the stream for another reason: `remote error: <text>` (e.g.
    /// `too many active streams`).
    RemoteError,
    /// The connection failed or was lost (`muxer closed`, `heartbeat timeout`, a dial that may succeed
    /// later). Transient.
    Connection,
    /// The server refused the credentials (HTTP 401/403) or the token source failed with such a text.
    Unauthorized,
    /// A dial that cannot succeed as configured (bad URL, `wss://` without TLS, CBOR refused).
    InvalidConfig,
    /// The stream was torn down because its reader did not keep up
    /// (`stream receive buffer overloaded`).
    Overloaded,
    /// The operation was cancelled (`context canceled`).
    Canceled,
    /// The client was closed.
    Closed,
    /// `lease not acquired: <message>`.
    LeaseNotAcquired,
    /// The lease could not be renewed; the guarded future was cancelled.
    LeaseLost,
    /// `produce failed: <error>` (publish).
    ProduceFailed,
    /// `no status confirmation from server` (publish).
    NoConfirmation,
    /// `invalid consume entry payload`.
    InvalidEntry,
    /// An answer that could not be decoded, or an answer of the wrong type.
    Protocol,
    /// An argument the client refuses before sending anything.
    InvalidArgument,
    /// No frame for three heartbeat intervals on a subscription or worker stream.
    HeartbeatTimeout,
}

/// A client error: [`kind`](Self::kind) to match on, and a message that is the exact text of the Go
/// client (`remote closed stream: sequence gap: expected 3, got 4`, `remote error: access denied`,
/// `lease not acquired: ...`). `Display` prints the message alone; [`source`](std::error::Error::source)
/// is the underlying failure where there is one (a dial's I/O or TLS error).
///
/// ```
/// use streamkit::{Error, ErrorKind};
/// # fn handle(error: Error) {
/// match error.kind() {
///     ErrorKind::SequenceConflict { expected, .. } => println!("someone else wrote; next is {expected}"),
///     ErrorKind::AccessDenied => println!("the token does not cover this store"),
///     _ if error.is_retryable() => println!("try again: {error}"),
///     _ => println!("failed: {error}"),
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    /// Set when configuration overrides the classification by text (auth retries).
    retryable: Option<bool>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Errors are equal when their kinds and texts are (the source is not compared).
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, &self.message, self.retryable) == (other.kind, &other.message, other.retryable)
    }
}

impl Eq for Error {}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), retryable: None, source: None }
    }

    /// This error with `source` as its [`source`](std::error::Error::source).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// This error, classified as transient whatever its text (Go `RetryAuthFailures`).
    pub(crate) fn into_transient(self) -> Self {
        Self { kind: ErrorKind::Connection, retryable: Some(true), ..self }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The full text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether opening the operation again may succeed, with Go's `IsRetryable` rules: cancellation and
    /// texts naming a permanent condition are not retryable, everything else is.
    pub fn is_retryable(&self) -> bool {
        if let Some(retryable) = self.retryable {
            return retryable;
        }
        match self.kind {
            ErrorKind::Canceled
            | ErrorKind::Closed
            | ErrorKind::Unauthorized
            | ErrorKind::InvalidConfig
            | ErrorKind::InvalidArgument
            | ErrorKind::LeaseNotAcquired
            | ErrorKind::LeaseLost => false,
            _ => is_retryable_text(&self.message),
        }
    }

    /// The error a reader sees for a stream that ended for `reason`, with the reason's text.
    pub fn from_stream_end(reason: &EndReason) -> Self {
        let kind = match reason {
            EndReason::RemoteClosed(text) => match sequence_gap(text) {
                Some((expected, got)) => ErrorKind::SequenceConflict { expected, got },
                None => ErrorKind::RemoteClosed,
            },
            EndReason::RemoteError(text) if text == "access denied" => ErrorKind::AccessDenied,
            EndReason::RemoteError(text) if text == "store unavailable" => ErrorKind::StoreUnavailable,
            EndReason::RemoteError(_) => ErrorKind::RemoteError,
            EndReason::Overloaded => ErrorKind::Overloaded,
            EndReason::Canceled => ErrorKind::Canceled,
            EndReason::ClientClosed => ErrorKind::Closed,
            EndReason::Malformed(_) | EndReason::UnknownControl { .. } => ErrorKind::Protocol,
            _ => ErrorKind::Connection,
        };
        Self::new(kind, reason.to_string())
    }

    /// A lost connection (`muxer closed`).
    pub(crate) fn muxer_closed() -> Self {
        Self::from_stream_end(&EndReason::MuxerClosed)
    }

    /// The client was closed (`client closed`).
    pub(crate) fn closed() -> Self {
        Self::from_stream_end(&EndReason::ClientClosed)
    }

    /// The caller gave the operation up (`context canceled`, as Go reports it).
    pub(crate) fn canceled() -> Self {
        Self::from_stream_end(&EndReason::Canceled)
    }

    /// An answer of the wrong type for the operation.
    pub(crate) fn unexpected(what: &str) -> Self {
        Self::new(ErrorKind::Protocol, format!("unexpected message: {what}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl From<DialError> for Error {
    fn from(error: DialError) -> Self {
        let kind = match &error {
            DialError::Unauthorized | DialError::Forbidden | DialError::InvalidToken => {
                ErrorKind::Unauthorized
            }
            e if e.is_permanent() => ErrorKind::InvalidConfig,
            _ => ErrorKind::Connection,
        };
        Self::new(kind, error.to_string()).with_source(error)
    }
}

/// The two sequences of Go's `sequence gap: expected X, got Y` (also after a prefix such as an
/// instance's wrapping of it).
fn sequence_gap(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.find("sequence gap: expected ")? + "sequence gap: expected ".len()..];
    let (expected, rest) = rest.split_once(", got ")?;
    let got = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((expected.parse().ok()?, got.parse().ok()?))
}

/// Substrings (lower case) that make an error permanent in Go's `IsRetryable`.
const PERMANENT_TEXTS: &[&str] = &[
    "not found",
    "unauthorized",
    "forbidden",
    "access denied",
    "authentication failed",
    "invalid argument",
    "invalid request",
    "bad request",
    "permission denied",
    "stream receive buffer overloaded",
    "stream overloaded",
    "payload too large",
    "frame payload size exceeds limit",
];

/// Go's `IsRetryable` on an error text: cancellation and the permanent texts above are not retryable;
/// everything else (connection refused, reset, timeouts, 503, ...) is.
pub fn is_retryable_text(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    if lower.contains("context canceled") || lower.contains("context deadline exceeded") {
        return false;
    }
    !PERMANENT_TEXTS.iter().any(|p| lower.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_is_retryable_samples() {
        assert!(!is_retryable_text("context canceled"));
        assert!(!is_retryable_text("not found"));
        assert!(!is_retryable_text("invalid argument: foo"));
        assert!(is_retryable_text("connection refused"));
        assert!(is_retryable_text("503 service unavailable"));
        assert!(!is_retryable_text("remote error: access denied"));
        assert!(!is_retryable_text("401 Unauthorized"));
        assert!(is_retryable_text("muxer closed"));
    }

    #[test]
    fn stream_ends_classify() {
        let gap = Error::from_stream_end(&EndReason::RemoteClosed("sequence gap: expected 3, got 4".into()));
        assert_eq!(gap.kind(), ErrorKind::SequenceConflict { expected: 3, got: 4 });
        assert_eq!(gap.to_string(), "remote closed stream: sequence gap: expected 3, got 4");
        let other = Error::from_stream_end(&EndReason::RemoteClosed("sequence gap: expected 3".into()));
        assert_eq!(other.kind(), ErrorKind::RemoteClosed, "a text that does not parse stays generic");
        let denied = Error::from_stream_end(&EndReason::RemoteError("access denied".into()));
        assert_eq!(denied.kind(), ErrorKind::AccessDenied);
        let unavailable = Error::from_stream_end(&EndReason::RemoteError("store unavailable".into()));
        assert_eq!((unavailable.kind(), unavailable.is_retryable()), (ErrorKind::StoreUnavailable, true));
        let busy = Error::from_stream_end(&EndReason::RemoteError("too many active streams".into()));
        assert_eq!(busy.kind(), ErrorKind::RemoteError);
        assert_eq!(denied.to_string(), "remote error: access denied");
        assert!(!denied.is_retryable());
        let lost = Error::muxer_closed();
        assert_eq!((lost.kind(), lost.message()), (ErrorKind::Connection, "muxer closed"));
        assert!(lost.is_retryable());
        let overloaded = Error::from_stream_end(&EndReason::Overloaded);
        assert_eq!(overloaded.kind(), ErrorKind::Overloaded);
        let canceled = Error::canceled();
        assert_eq!((canceled.kind(), canceled.message()), (ErrorKind::Canceled, "context canceled"));
        assert!(!canceled.is_retryable());
        let closed = Error::closed();
        assert_eq!((closed.kind(), closed.message()), (ErrorKind::Closed, "client closed"));
        let garbled = Error::from_stream_end(&EndReason::Malformed("malformed message: eof".into()));
        assert_eq!(garbled.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn dial_errors_classify() {
        let unauthorized = Error::from(DialError::Unauthorized);
        assert_eq!((unauthorized.kind(), unauthorized.is_retryable()), (ErrorKind::Unauthorized, false));
        let timeout = Error::from(DialError::Timeout);
        assert_eq!((timeout.kind(), timeout.is_retryable()), (ErrorKind::Connection, true));
        let source = std::error::Error::source(&timeout).expect("the dial error is the source");
        assert_eq!(source.to_string(), DialError::Timeout.to_string());
        assert_eq!(Error::from(DialError::TlsUnsupported).kind(), ErrorKind::InvalidConfig);
    }
}
