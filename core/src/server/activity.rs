//! What the engine reports about its streams for metrics and logs: the operation each stream runs,
//! how it ended ([`EngineEffect::Ended`](super::EngineEffect::Ended)), and how many streams of each
//! kind are open ([`EngineStats`]). The adapters keep no per-stream state of their own for this.

use alloc::string::String;

use crate::api::Envelope;

/// The operation a stream runs: the type of its request (PROTOCOL.md §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Operation {
    Produce,
    Peek,
    ConsumeSegment,
    ConsumeSpace,
    Consume,
    GetSpaces,
    GetSegments,
    GetStatus,
    SubscribeSegmentStatus,
    SubscribeWorkers,
    LeaseAcquire,
    LeaseRenew,
    LeaseRelease,
    /// A stream whose first message was not a request this server knows.
    Invalid,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 14] = [
        Operation::Produce,
        Operation::Peek,
        Operation::ConsumeSegment,
        Operation::ConsumeSpace,
        Operation::Consume,
        Operation::GetSpaces,
        Operation::GetSegments,
        Operation::GetStatus,
        Operation::SubscribeSegmentStatus,
        Operation::SubscribeWorkers,
        Operation::LeaseAcquire,
        Operation::LeaseRenew,
        Operation::LeaseRelease,
        Operation::Invalid,
    ];

    /// The operation of a stream's first message, and what the stream counts as.
    pub fn of(request: &Result<Envelope, String>) -> (Self, StreamKind) {
        let plain = |op| (op, StreamKind::Plain);
        let Ok(envelope) = request else { return plain(Operation::Invalid) };
        match envelope {
            Envelope::Produce(_) => plain(Operation::Produce),
            Envelope::Peek(_) => plain(Operation::Peek),
            Envelope::ConsumeSegment(_) => plain(Operation::ConsumeSegment),
            Envelope::ConsumeSpace(_) => plain(Operation::ConsumeSpace),
            Envelope::Consume(_) => plain(Operation::Consume),
            Envelope::GetSpaces(_) => plain(Operation::GetSpaces),
            Envelope::GetSegments(_) => plain(Operation::GetSegments),
            Envelope::GetStatus(_) => plain(Operation::GetStatus),
            Envelope::SubscribeToSegmentStatus(_) => {
                (Operation::SubscribeSegmentStatus, StreamKind::Subscriber)
            }
            Envelope::SubscribeWorkers(r) if r.worker_id.is_nil() => {
                (Operation::SubscribeWorkers, StreamKind::Subscriber)
            }
            Envelope::SubscribeWorkers(_) => (Operation::SubscribeWorkers, StreamKind::Worker),
            Envelope::LeaseAcquire(_) => plain(Operation::LeaseAcquire),
            Envelope::LeaseRenew(_) => plain(Operation::LeaseRenew),
            Envelope::LeaseRelease(_) => plain(Operation::LeaseRelease),
            _ => plain(Operation::Invalid),
        }
    }

    /// The space and segment a request names (empty when it names none), for logs.
    pub fn target(request: &Result<Envelope, String>) -> (&str, &str) {
        match request {
            Ok(Envelope::Produce(r)) => (&r.space, &r.segment),
            Ok(Envelope::Peek(r)) => (&r.space, &r.segment),
            Ok(Envelope::ConsumeSegment(r)) => (&r.space, &r.segment),
            Ok(Envelope::ConsumeSpace(r)) => (&r.space, ""),
            Ok(Envelope::GetSegments(r)) => (&r.space, ""),
            Ok(Envelope::SubscribeToSegmentStatus(r)) => (&r.space, &r.segment),
            _ => ("", ""),
        }
    }

    /// A short snake-case name (the `op` label of the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Peek => "peek",
            Operation::ConsumeSegment => "consume_segment",
            Operation::ConsumeSpace => "consume_space",
            Operation::Consume => "consume",
            Operation::GetSpaces => "get_spaces",
            Operation::GetSegments => "get_segments",
            Operation::GetStatus => "get_status",
            Operation::SubscribeSegmentStatus => "subscribe_segment_status",
            Operation::SubscribeWorkers => "subscribe_workers",
            Operation::LeaseAcquire => "lease_acquire",
            Operation::LeaseRenew => "lease_renew",
            Operation::LeaseRelease => "lease_release",
            Operation::Invalid => "invalid",
        }
    }
}

/// What an open stream counts as, besides a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// A request being answered.
    Plain,
    /// A live subscription: segment statuses, or a worker inventory observed without registering.
    Subscriber,
    /// A registered worker's presence stream.
    Worker,
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Completed successfully.
    Ok,
    /// Ended with an error (storage error, sequence conflict, invalid request, ...).
    Error,
    /// Refused before it started: the store could not be opened (`store unavailable`) or the server is
    /// shutting down.
    Rejected,
    /// Ended by the client, by its connection going away, or by the server's shutdown.
    Cancelled,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 4] = [Outcome::Ok, Outcome::Error, Outcome::Rejected, Outcome::Cancelled];

    /// A short name (the `outcome` label of the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Streams an engine serves now, by kind ([`Engine::stats`](super::Engine::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Every stream, from its request until its end.
    pub streams: u64,
    /// Of which live subscriptions ([`StreamKind::Subscriber`]).
    pub subscriptions: u64,
    /// Of which registered workers ([`StreamKind::Worker`]).
    pub workers: u64,
}

impl EngineStats {
    pub(super) fn add(&mut self, kind: StreamKind) {
        self.streams += 1;
        match kind {
            StreamKind::Plain => {}
            StreamKind::Subscriber => self.subscriptions += 1,
            StreamKind::Worker => self.workers += 1,
        }
    }

    pub(super) fn remove(&mut self, kind: StreamKind) {
        self.streams = self.streams.saturating_sub(1);
        match kind {
            StreamKind::Plain => {}
            StreamKind::Subscriber => self.subscriptions = self.subscriptions.saturating_sub(1),
            StreamKind::Worker => self.workers = self.workers.saturating_sub(1),
        }
    }
}
