//! The systems under test behind one interface, [`Conn`]: a connection that can append, read and
//! watch. Each system maps the workloads' notions onto its own:
//!
//! | notion | streamkit | NATS JetStream | Redis Streams |
//! |---|---|---|---|
//! | stream | segment of space `bench` | subject `ev.<name>` of stream `EV` | key `bench:<name>` |
//! | space | space `bench` | the whole stream `EV` | (no ordered read across keys) |
//! | expected-sequence append | record carrying the next sequence | `Nats-Expected-Last-Subject-Sequence` | Lua script checking the last id |
//! | watch | segment-status subscription | ordered consumer, deliver new | `XREAD BLOCK` |

pub mod nats;
pub mod redis;
pub mod streamkit;

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Result;

/// The name of the space (streamkit), stream (NATS) or key prefix (Redis) every workload writes to.
pub const SPACE: &str = "bench";

/// One connection to a system under test; clones share the connection.
pub trait Conn: Clone + Send + Sync + 'static {
    /// What an expected-sequence appender remembers between appends to one stream.
    type Occ: Send + 'static;

    /// Appends `count` records of `payload` to `stream`, the first being its record number `first`
    /// (1-based), as one batch (one produce call, a window of asynchronous publishes, a pipeline),
    /// and waits until all are acknowledged.
    fn append_batch(
        &self,
        stream: &str,
        first: u64,
        count: u64,
        payload: &Bytes,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads `stream` from its start, checking that records arrive in order, until `expected` were
    /// read; returns how many were read.
    fn read_stream(&self, stream: &str, expected: u64) -> impl Future<Output = Result<u64>> + Send;

    /// Why this system cannot read a whole space in one ordered read, if it cannot.
    fn space_read_unsupported(&self) -> Option<&'static str> {
        None
    }

    /// Reads every stream of the space in the system's global order, checking per-stream order,
    /// until `expected` records were read; returns how many were read.
    fn read_space(&self, expected: u64) -> impl Future<Output = Result<u64>> + Send;

    /// Starts expected-sequence appends to `stream`, which must be empty.
    fn occ_start(&self, stream: &str) -> Self::Occ;

    /// Appends one record to the stream of `occ` with the expectation that the stream is exactly as
    /// `occ` last left it; a conflict is an error.
    fn append_expected(
        &self,
        occ: &mut Self::Occ,
        payload: &Bytes,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Starts watching `stream` (from now on): every time the watcher learns that the stream has
    /// `n` records, it sends `(n, when)` to `seen`. Resolves once the watch is established.
    fn watch(
        &self,
        stream: &str,
        seen: mpsc::Sender<(u64, Instant)>,
    ) -> impl Future<Output = Result<JoinHandle<()>>> + Send;

    /// Closes the connection.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// A running system under test that hands out connections.
pub trait System: Send + Sync {
    /// Its connections.
    type Conn: Conn;

    /// A new connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn>> + Send;

    /// Stops the system and removes its data.
    fn stop(self) -> impl Future<Output = ()> + Send;
}
