//! One registered logical stream: its inbound queue and the state of both directions.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use uuid::Uuid;

use super::event::{StreamEnd, StreamInput};

/// A registered stream. The session owns the bounds; this only keeps the counters they are checked on.
#[derive(Debug)]
pub(crate) struct Stream {
    /// Store of the frame that opened the stream.
    pub(crate) store_id: Uuid,
    /// Distinguishes this registration from an earlier stream with the same channel id, whose frames
    /// may still be waiting for `poll_transmit` after it was released.
    pub(crate) generation: u64,
    inbound: VecDeque<StreamInput>,
    queued_payloads: usize,
    queued_bytes: usize,
    /// The peer ended its side (an `End` was queued): nothing more is accepted for receiving.
    pub(crate) peer_closed: bool,
    /// We sent our `mux::close`: `send` is refused.
    pub(crate) send_closed: bool,
    /// A `Readable` for this stream is waiting in the event queue.
    pub(crate) readable_pending: bool,
}

impl Stream {
    pub(crate) fn new(store_id: Uuid, generation: u64) -> Self {
        Self {
            store_id,
            generation,
            inbound: VecDeque::new(),
            queued_payloads: 0,
            queued_bytes: 0,
            peer_closed: false,
            send_closed: false,
            readable_pending: false,
        }
    }

    /// Queues a payload; returns whether the queue was empty before (the caller may signal readability).
    pub(crate) fn push_payload(&mut self, payload: Vec<u8>) -> bool {
        let was_empty = self.inbound.is_empty();
        self.queued_payloads += 1;
        self.queued_bytes += payload.len();
        self.inbound.push_back(StreamInput::Payload(payload));
        was_empty
    }

    /// Queues the peer's end after everything received so far; returns whether the queue was empty.
    pub(crate) fn push_end(&mut self, end: StreamEnd) -> bool {
        let was_empty = self.inbound.is_empty();
        self.peer_closed = true;
        self.inbound.push_back(StreamInput::End(end));
        was_empty
    }

    /// Pops the next item, keeping the counters in step.
    pub(crate) fn pop(&mut self) -> Option<StreamInput> {
        let item = self.inbound.pop_front()?;
        if let StreamInput::Payload(p) = &item {
            self.queued_payloads -= 1;
            self.queued_bytes -= p.len();
        }
        Some(item)
    }

    /// Number of queued payloads (the `End` marker excluded).
    pub(crate) fn queued_payloads(&self) -> usize {
        self.queued_payloads
    }

    /// Bytes of the queued payloads.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn counters_follow_the_queue() {
        let mut s = Stream::new(Uuid::nil(), 1);
        assert!(s.push_payload(vec![1, 2, 3]));
        assert!(!s.push_payload(vec![4]));
        assert!(!s.push_end(StreamEnd::Finished));
        assert_eq!((s.queued_payloads(), s.queued_bytes()), (2, 4));
        assert_eq!(s.pop(), Some(StreamInput::Payload(vec![1, 2, 3])));
        assert_eq!((s.queued_payloads(), s.queued_bytes()), (1, 1));
        assert_eq!(s.pop(), Some(StreamInput::Payload(vec![4])));
        assert_eq!(s.pop(), Some(StreamInput::End(StreamEnd::Finished)));
        assert_eq!(s.pop(), None);
        assert_eq!((s.queued_payloads(), s.queued_bytes()), (0, 0));
        assert!(s.peer_closed);
    }
}
