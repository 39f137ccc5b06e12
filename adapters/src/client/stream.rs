//! What an operation holds while its logical stream is open, and what it tells the driver that owns
//! the connection. Both transports (socket and in-process) hand operations the same [`OpStream`], so
//! every operation is written once.
//!
//! Bounds: answers wait in a bounded channel per stream (the driver only pulls more from the connection
//! while it has room); messages an operation sends wait for send credit (the driver returns it as the
//! transport takes them), so at most a window of them is ever queued; the control channel carries at
//! most one `Resume` per stall and one `Cancel`/`CloseSend` per stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_channel::{Receiver, Sender};
use futures_channel::oneshot;
use futures_core::Stream;
use streamkit_proto::api::Request;
use streamkit_proto::stream::StreamEnd;
use streamkit_proto::wire::Message;
use uuid::Uuid;

use super::error::Error;

/// A request from operations to a driver, through its bounded request channel.
pub(crate) enum Command {
    /// Open a stream on `store` whose first message is `request`.
    Open { store: Uuid, request: Request, reply: oneshot::Sender<Result<OpStream, Error>> },
    /// Send a later message (the caller holds one unit of send credit for it).
    Send { channel: Uuid, message: Message },
    /// End what this side sends (`mux::close`, with `err` if any). On the same channel as `Send`, so it
    /// never overtakes the stream's last messages.
    CloseSend { channel: Uuid, err: Option<String> },
    /// Connect now (socket transport) rather than at the first operation.
    Connect { reply: oneshot::Sender<Result<(), Error>> },
    /// Close the client: every stream fails with `client closed`, the connection is closed.
    Close { done: oneshot::Sender<()> },
}

/// Signals from operations that must not wait (sent from `Drop` and `poll`), through the driver's
/// unbounded signal channel; each stream sends at most one per state change, so it stays small.
pub(crate) enum Signal {
    /// The operation made room in a stream whose channel was full: pull more.
    Resume(Uuid),
    /// The operation was dropped before its stream ended: tell the server (`mux::close` with
    /// `context canceled`) and forget the stream.
    Cancel(Uuid),
}

/// State shared between a driver and one operation.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set by the driver when the answer channel was full while answers were waiting.
    stalled: AtomicBool,
    /// How the stream ended; set by the driver before it drops the answer sender.
    end: Mutex<Option<Result<(), Error>>>,
}

/// The driver's half of one stream.
pub(crate) struct DriverStream {
    pub(crate) items: Sender<Message>,
    pub(crate) shared: Arc<Shared>,
    /// Send credit in use: the operation puts a unit in to send (waiting while the window is full),
    /// the driver takes units out as credit comes back. A counting semaphore that costs nothing to
    /// create (pre-filling a channel with `send_window` units cost ~9k instructions per operation).
    pub(crate) credit: Receiver<()>,
}

impl DriverStream {
    /// Whether the operation's answer channel has room.
    pub(crate) fn has_room(&self) -> bool {
        !self.items.is_full()
    }

    /// Records that answers wait for room; returns true if room appeared meanwhile (pull again).
    pub(crate) fn mark_stalled(&self) -> bool {
        self.shared.stalled.store(true, Ordering::Release);
        // The operation clears the flag after taking an answer; checking again after setting it means
        // an operation that emptied the channel in between is not left waiting forever.
        !self.items.is_full()
    }

    /// Hands an answer over (the caller checked [`has_room`](Self::has_room); a dropped operation
    /// simply loses it, its `Cancel` is on the way).
    pub(crate) fn deliver(&self, message: Message) {
        let _ = self.items.try_send(message);
    }

    /// Returns `n` units of send credit.
    pub(crate) fn add_credit(&self, n: u32) {
        for _ in 0..n {
            // Empty only when credit came back for frames that took none (a `mux::close`).
            if self.credit.try_recv().is_err() {
                break;
            }
        }
    }

    /// Ends the stream: the operation reads what is buffered, then `end`.
    pub(crate) fn finish(self, end: Result<(), Error>) {
        if let Ok(mut slot) = self.shared.end.lock() {
            slot.get_or_insert(end);
        }
        // Dropping `items` and `credit` closes both channels.
    }
}

/// Maps a core stream end to the operation's result.
pub(crate) fn end_result(end: &StreamEnd) -> Result<(), Error> {
    match end {
        StreamEnd::Finished => Ok(()),
        StreamEnd::Failed(reason) => Err(Error::from_stream_end(reason)),
    }
}

/// Builds both halves of a new stream.
pub(crate) fn new_stream(
    channel: Uuid,
    buffer: usize,
    send_window: u32,
    commands: Sender<Command>,
    signals: Sender<Signal>,
) -> (DriverStream, OpStream) {
    let (items_tx, items_rx) = async_channel::bounded(buffer.max(1));
    let window = send_window.max(1) as usize;
    let (credit_tx, credit_rx) = async_channel::bounded(window);
    let shared = Arc::new(Shared::default());
    let driver = DriverStream { items: items_tx, shared: shared.clone(), credit: credit_rx };
    let sender = OpSender { channel, commands, credit: credit_tx, shared: shared.clone() };
    let op = OpStream { channel, items: Box::pin(items_rx), shared, signals, sender, done: false };
    (driver, op)
}

/// The operation's half of an open stream. Dropping it before the stream ended cancels the operation.
pub(crate) struct OpStream {
    channel: Uuid,
    /// Boxed: async-channel receivers are `!Unpin` while they wait.
    items: Pin<Box<Receiver<Message>>>,
    shared: Arc<Shared>,
    signals: Sender<Signal>,
    sender: OpSender,
    done: bool,
}

impl OpStream {
    /// A handle for sending on this stream from another task.
    pub(crate) fn sender(&self) -> OpSender {
        self.sender.clone()
    }

    /// The next answer: `Some(Ok)`, then `None` at a clean end or one `Some(Err)` when the stream failed.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.items.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(message)) => {
                if self.shared.stalled.swap(false, Ordering::AcqRel) {
                    let _ = self.signals.try_send(Signal::Resume(self.channel));
                }
                Poll::Ready(Some(Ok(message)))
            }
            Poll::Ready(None) => {
                self.done = true;
                let end = self.shared.end.lock().ok().and_then(|slot| slot.clone());
                match end {
                    Some(Ok(())) => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(e))),
                    // The driver is gone without a word: the client was dropped or closed.
                    None => Poll::Ready(Some(Err(Error::closed()))),
                }
            }
        }
    }

    /// Awaits the next answer (see [`poll_recv`](Self::poll_recv)).
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Awaits the single answer of a request/response operation and the end of the stream.
    pub(crate) async fn single(mut self) -> Result<Option<Message>, Error> {
        let mut answer = None;
        while let Some(item) = self.recv().await {
            let message = item?;
            answer.get_or_insert(message);
        }
        Ok(answer)
    }

    fn cancel_inner(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self.signals.try_send(Signal::Cancel(self.channel));
        }
    }
}

impl Drop for OpStream {
    fn drop(&mut self) {
        self.cancel_inner();
    }
}

/// Sends on an open stream, waiting for send credit, from any task.
#[derive(Clone)]
pub(crate) struct OpSender {
    channel: Uuid,
    commands: Sender<Command>,
    /// See [`DriverStream::credit`].
    credit: Sender<()>,
    shared: Arc<Shared>,
}

impl OpSender {
    /// Sends `message` once the stream has send credit; fails once the stream is over.
    pub(crate) async fn send(&self, message: Message) -> Result<(), Error> {
        // Fails once the driver dropped its half: the stream is over.
        if self.credit.send(()).await.is_err() {
            return Err(self.ended());
        }
        self.commands
            .send(Command::Send { channel: self.channel, message })
            .await
            .map_err(|_| Error::closed())
    }

    /// Ends what this side sends, after every message sent before.
    pub(crate) async fn close_send(&self, err: Option<String>) {
        let _ = self.commands.send(Command::CloseSend { channel: self.channel, err }).await;
    }

    /// Why sending is no longer possible.
    fn ended(&self) -> Error {
        match self.shared.end.lock().ok().and_then(|slot| slot.clone()) {
            Some(Err(e)) => e,
            Some(Ok(())) => Error::new(super::ErrorKind::Connection, "stream closed"),
            None => Error::canceled(),
        }
    }
}
