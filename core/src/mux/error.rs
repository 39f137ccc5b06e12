//! Errors of the application-facing mux calls.

/// Why an application call on a [`MuxSession`](super::MuxSession) failed. Texts are Go's where Go
/// clients match on them (`muxer closed` is retried by the Go provider; `muxer payload too large` is
/// surfaced to callers).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// No registered stream has this channel id (never opened, released, rejected or aborted).
    #[error("unknown stream")]
    UnknownStream,
    /// The stream's send side was closed with `close_send`.
    #[error("stream send side closed")]
    SendClosed,
    /// The payload cannot be sent. `len`/`limit` name the bound that was exceeded: the payload against
    /// `limits.max_payload`, or, for a payload under that bound, the encoded frame against
    /// `limits.max_frame` (a peer would otherwise shut the whole connection down on receipt).
    #[error("muxer payload too large")]
    PayloadTooLarge {
        /// Size that was over the limit.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The session is shut down.
    #[error("muxer closed")]
    ShutDown,
    /// `open_stream` was called on a server-role session.
    #[error("only a client-role muxer opens streams")]
    NotClient,
}
