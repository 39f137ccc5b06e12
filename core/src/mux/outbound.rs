//! The outbound side of a session: what `poll_transmit` hands out, in which order.
//!
//! Control frames (pong, ping, `error`) go first: they are small, and delaying a pong behind bulk data
//! could make the peer time the connection out. Data frames are queued per stream and taken round-robin,
//! one frame per stream per turn, so a stream with thousands of queued frames never starves another. The
//! connection's `close` frame goes last, after everything queued before the shutdown (Go drains its write
//! queue before writing `close`; sending it first would make the peer drop the rest).
//!
//! Data frames are encoded when the application sends them (so size errors are reported synchronously)
//! and are bounded by the application through `Sent` credit; control frames are bounded by
//! [`MAX_QUEUED_CONTROL_FRAMES`](super::config::MAX_QUEUED_CONTROL_FRAMES), enforced by the session.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use uuid::Uuid;

use crate::wire::{Codec, ControlType, Frame};

#[derive(Debug)]
struct OutFrame {
    generation: u64,
    /// The application's charge for the frame, returned with `Sent`.
    charge: u64,
    bytes: Vec<u8>,
}

/// A frame taken for transmission.
pub(crate) enum Taken {
    /// A connection-level or `error` frame.
    Control(Vec<u8>),
    /// A data frame of the stream registration `generation` of `channel`.
    Data { channel: Uuid, generation: u64, charge: u64, bytes: Vec<u8> },
}

#[derive(Debug, Default)]
pub(crate) struct Outbound {
    /// A pong is owed. Pings are coalesced: a pong only tells the peer we are alive.
    pong: bool,
    /// A heartbeat ping is due (coalesced the same way).
    ping: bool,
    /// Encoded `error` frames, oldest first.
    errors: VecDeque<Vec<u8>>,
    /// Per-channel data frames.
    data: BTreeMap<Uuid, VecDeque<OutFrame>>,
    /// Channels with queued data frames, in round-robin order; each appears once.
    ring: VecDeque<Uuid>,
    /// The connection's `close` frame is owed (after everything else).
    close: bool,
    data_frames: usize,
    /// Bytes of the queued data and `error` frames.
    queued_bytes: usize,
}

impl Outbound {
    pub(crate) fn queue_pong(&mut self) {
        self.pong = true;
    }

    pub(crate) fn queue_ping(&mut self) {
        self.ping = true;
    }

    pub(crate) fn queue_close(&mut self) {
        self.close = true;
    }

    pub(crate) fn queue_error(&mut self, bytes: Vec<u8>) {
        self.queued_bytes += bytes.len();
        self.errors.push_back(bytes);
    }

    /// Bytes of the queued data and `error` frames (pings, pongs and the close are a few bytes each).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Number of queued `error` frames.
    pub(crate) fn queued_errors(&self) -> usize {
        self.errors.len()
    }

    /// Bytes of the queued data frames of each channel.
    pub(crate) fn queued_bytes_by_channel(&self) -> impl Iterator<Item = (Uuid, usize)> + '_ {
        self.data.iter().map(|(channel, queue)| (*channel, queue.iter().map(|f| f.bytes.len()).sum()))
    }

    /// Number of queued data frames over all streams.
    pub(crate) fn queued_data_frames(&self) -> usize {
        self.data_frames
    }

    pub(crate) fn queue_data(&mut self, channel: Uuid, generation: u64, charge: u64, bytes: Vec<u8>) {
        let queue = self.data.entry(channel).or_default();
        if queue.is_empty() {
            self.ring.push_back(channel);
        }
        self.queued_bytes += bytes.len();
        queue.push_back(OutFrame { generation, charge, bytes });
        self.data_frames += 1;
    }

    /// Drops the queued data frames of one registration of `channel` (a rejected or aborted stream: the
    /// peer's side is ended by an `error` frame, so later data would only be dropped there).
    pub(crate) fn drop_stream(&mut self, channel: Uuid, generation: u64) {
        let Some(queue) = self.data.get_mut(&channel) else { return };
        let before = queue.len();
        let mut dropped_bytes = 0;
        queue.retain(|f| {
            let keep = f.generation != generation;
            if !keep {
                dropped_bytes += f.bytes.len();
            }
            keep
        });
        self.data_frames -= before - queue.len();
        self.queued_bytes -= dropped_bytes;
        if queue.is_empty() {
            self.data.remove(&channel);
            self.ring.retain(|c| *c != channel);
        }
    }

    /// Forgets everything (the transport is gone).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.pong && !self.ping && !self.close && self.errors.is_empty() && self.ring.is_empty()
    }

    /// The next frame to write.
    pub(crate) fn take(&mut self, codec: Codec) -> Option<Taken> {
        if core::mem::take(&mut self.pong) {
            return Some(Taken::Control(codec.encode_frame(&Frame::control(ControlType::Pong))));
        }
        if core::mem::take(&mut self.ping) {
            return Some(Taken::Control(codec.encode_frame(&Frame::control(ControlType::Ping))));
        }
        if let Some(bytes) = self.errors.pop_front() {
            self.queued_bytes -= bytes.len();
            return Some(Taken::Control(bytes));
        }
        // The ring only holds channels with queued frames; should it ever not, the entry is skipped
        // rather than trusted, so poll_transmit stays total.
        while let Some(channel) = self.ring.pop_front() {
            let Some(queue) = self.data.get_mut(&channel) else { continue };
            let Some(frame) = queue.pop_front() else {
                self.data.remove(&channel);
                continue;
            };
            self.data_frames -= 1;
            self.queued_bytes -= frame.bytes.len();
            if queue.is_empty() {
                self.data.remove(&channel);
            } else {
                self.ring.push_back(channel);
            }
            let OutFrame { generation, charge, bytes } = frame;
            return Some(Taken::Data { channel, generation, charge, bytes });
        }
        if core::mem::take(&mut self.close) {
            return Some(Taken::Control(codec.encode_frame(&Frame::control(ControlType::Close))));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn data(t: Taken) -> (Uuid, Vec<u8>) {
        match t {
            Taken::Data { channel, bytes, .. } => (channel, bytes),
            Taken::Control(_) => panic!("expected a data frame"),
        }
    }

    #[test]
    fn round_robin_and_control_first() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut o = Outbound::default();
        for i in 0..3u8 {
            o.queue_data(a, 1, 0, vec![i]);
        }
        o.queue_data(b, 1, 0, vec![9]);
        o.queue_close();
        o.queue_error(vec![7]);
        o.queue_pong();
        assert!(
            matches!(o.take(Codec::Json), Some(Taken::Control(f)) if f.starts_with(b"{\"ControlType\":\"pong\""))
        );
        assert!(matches!(o.take(Codec::Json), Some(Taken::Control(f)) if f == [7]));
        let order: Vec<_> = (0..4).map(|_| data(o.take(Codec::Json).unwrap())).collect();
        assert_eq!(order, vec![(a, vec![0]), (b, vec![9]), (a, vec![1]), (a, vec![2])]);
        assert!(
            matches!(o.take(Codec::Json), Some(Taken::Control(f)) if f.starts_with(b"{\"ControlType\":\"close\""))
        );
        assert!(o.take(Codec::Json).is_none());
        assert!(o.is_empty());
    }

    #[test]
    fn drop_stream_keeps_other_generations() {
        let a = Uuid::from_u128(1);
        let mut o = Outbound::default();
        o.queue_data(a, 1, 0, vec![1]);
        o.queue_data(a, 2, 0, vec![2]);
        o.drop_stream(a, 2);
        assert_eq!(o.queued_data_frames(), 1);
        assert_eq!(data(o.take(Codec::Cbor).unwrap()), (a, vec![1]));
        o.queue_data(a, 2, 0, vec![3]);
        o.drop_stream(a, 2);
        assert!(o.is_empty());
        assert_eq!((o.queued_data_frames(), o.queued_bytes()), (0, 0));
    }
}
