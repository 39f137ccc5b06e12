//! [`ItemStream`]: the `Stream` every multi-answer operation returns (consume, names, produce statuses,
//! subscriptions, worker inventories).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use streamkit_proto::api::{Entry, Envelope, SegmentStatus, WorkerInventory};
use streamkit_proto::wire::Message;

use super::error::{Error, ErrorKind, HEARTBEAT_MISSED, INVALID_ENTRY};
use super::stream::OpStream;
use crate::runtime::{AsyncTimer, BoxFuture, JoinHandle, Runtime, RuntimeExt};

/// What an answer means for the stream.
pub(crate) enum Mapped<T> {
    /// Yield it.
    Item(T),
    /// Not for the caller (heartbeats); it still counts as a sign of life.
    Skip,
    /// The operation fails with this error (the stream is cancelled).
    Fail(Error),
}

/// Opening an operation: the stream and any helper tasks that live as long as it (record pump,
/// presence renewals).
pub(crate) type Opening = BoxFuture<'static, Result<(OpStream, Vec<JoinHandle<()>>), Error>>;

enum State {
    Opening(Opening),
    Open(OpStream),
    Done,
}

struct Idle {
    timeout: Duration,
    timer: Pin<Box<dyn AsyncTimer>>,
    runtime: Arc<dyn Runtime>,
}

impl Idle {
    fn reset(&mut self) {
        let deadline = self.runtime.now() + self.timeout;
        self.timer.as_mut().reset(deadline);
    }
}

/// The answers of one operation as a [`futures_core::Stream`] of `Result<T, Error>`.
///
/// The stream ends (`None`) when the server ends the operation cleanly; a failure is yielded once as
/// `Some(Err(..))` and the stream ends after it. Operations are opened lazily for consume and
/// name listings (on the first poll, like Go's enumerators) and eagerly for subscriptions.
///
/// **Dropping the stream cancels the operation**: the server receives `mux::close` with
/// `context canceled` and stops sending, and helper tasks (a produce's record pump, a worker's presence
/// renewals) stop.
#[must_use = "streams do nothing unless polled"]
pub struct ItemStream<T> {
    state: State,
    map: fn(Message) -> Mapped<T>,
    idle: Option<Idle>,
    tasks: Vec<JoinHandle<()>>,
}

impl<T> ItemStream<T> {
    /// A stream whose operation opens on the first poll.
    pub(crate) fn opening(opening: Opening, map: fn(Message) -> Mapped<T>) -> Self {
        Self { state: State::Opening(opening), map, idle: None, tasks: Vec::new() }
    }

    /// A stream over an operation that is already open.
    pub(crate) fn open(stream: OpStream, tasks: Vec<JoinHandle<()>>, map: fn(Message) -> Mapped<T>) -> Self {
        Self { state: State::Open(stream), map, idle: None, tasks }
    }

    /// Fails the stream with a heartbeat timeout when nothing arrives for `timeout`.
    pub(crate) fn with_idle_timeout(mut self, runtime: Arc<dyn Runtime>, timeout: Duration) -> Self {
        let timer = runtime.sleep(timeout);
        self.idle = Some(Idle { timeout, timer, runtime });
        self
    }

    fn stop(&mut self) {
        self.state = State::Done;
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl<T> Drop for ItemStream<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<T> Unpin for ItemStream<T> {}

impl<T> Stream for ItemStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok((stream, tasks))) => {
                        this.state = State::Open(stream);
                        this.tasks.extend(tasks);
                        if let Some(idle) = this.idle.as_mut() {
                            idle.reset();
                        }
                    }
                    Poll::Ready(Err(error)) => {
                        this.stop();
                        return Poll::Ready(Some(Err(error)));
                    }
                },
                State::Open(stream) => match stream.poll_recv(cx) {
                    Poll::Ready(Some(Ok(message))) => {
                        if let Some(idle) = this.idle.as_mut() {
                            idle.reset();
                        }
                        match (this.map)(message) {
                            Mapped::Item(item) => return Poll::Ready(Some(Ok(item))),
                            Mapped::Skip => continue,
                            Mapped::Fail(error) => {
                                this.stop();
                                return Poll::Ready(Some(Err(error)));
                            }
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        this.stop();
                        return Poll::Ready(Some(Err(error)));
                    }
                    Poll::Ready(None) => {
                        this.stop();
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {
                        if let Some(idle) = this.idle.as_mut()
                            && idle.timer.as_mut().poll_elapsed(cx).is_ready()
                        {
                            this.stop();
                            return Poll::Ready(Some(Err(Error::new(
                                ErrorKind::HeartbeatTimeout,
                                HEARTBEAT_MISSED,
                            ))));
                        }
                        return Poll::Pending;
                    }
                },
            }
        }
    }
}

/// Consume answers: stored entries only (Go rejects anything else with `invalid consume entry payload`).
pub(crate) fn valid_entry(message: Message) -> Mapped<Entry> {
    match message {
        Message::Entry(entry)
            if !entry.space.is_empty()
                && !entry.segment.is_empty()
                && entry.sequence != 0
                && entry.timestamp != 0
                && entry.payload.is_some() =>
        {
            Mapped::Item(entry)
        }
        Message::Entry(_) => Mapped::Fail(Error::new(ErrorKind::InvalidEntry, INVALID_ENTRY)),
        other => Mapped::Fail(Error::unexpected(kind_name(&other))),
    }
}

/// GetSpaces / GetSegments answers.
pub(crate) fn name(message: Message) -> Mapped<String> {
    match message {
        Message::Name(name) => Mapped::Item(name),
        other => Mapped::Fail(Error::unexpected(kind_name(&other))),
    }
}

/// Produce answers: every status.
pub(crate) fn status(message: Message) -> Mapped<SegmentStatus> {
    match message {
        Message::Status(status) => Mapped::Item(status),
        other => Mapped::Fail(Error::unexpected(kind_name(&other))),
    }
}

/// Subscription answers: statuses without the heartbeats.
pub(crate) fn live_status(message: Message) -> Mapped<SegmentStatus> {
    match message {
        Message::Status(status) if status.heartbeat => Mapped::Skip,
        Message::Status(status) => Mapped::Item(status),
        other => Mapped::Fail(Error::unexpected(kind_name(&other))),
    }
}

/// Worker stream answers: inventories; server presence heartbeats only prove the stream is alive.
pub(crate) fn inventory(message: Message) -> Mapped<WorkerInventory> {
    match message {
        Message::Envelope(Envelope::WorkerInventory(inventory)) => {
            Mapped::Item(Arc::unwrap_or_clone(inventory))
        }
        Message::Envelope(Envelope::Presence(_)) => Mapped::Skip,
        other => Mapped::Fail(Error::unexpected(kind_name(&other))),
    }
}

fn kind_name(message: &Message) -> &'static str {
    match message {
        Message::Envelope(envelope) => envelope.type_name(),
        Message::Record(_) => "record",
        Message::Entry(_) => "entry",
        Message::Status(_) => "segment_status",
        Message::LeaseResult(_) => "lease_result",
        Message::Name(_) => "name",
    }
}
