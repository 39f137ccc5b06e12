//! Vocabulary shared by every side of a logical stream (mux sessions, the store engine, client
//! operations, in-process transports).

use alloc::string::String;
use uuid::Uuid;

/// How the peer ended its sending side of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// A clean `mux::close` (end of stream).
    Finished,
    /// The stream ended with an error; the text is what a reader sees (spec §2.6):
    /// `remote closed stream: X`, `remote error: X`, or a local reason such as `muxer closed`.
    Failed(String),
}

impl StreamEnd {
    /// The error text, if any.
    pub fn error(&self) -> Option<&str> {
        match self {
            StreamEnd::Finished => None,
            StreamEnd::Failed(e) => Some(e),
        }
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
