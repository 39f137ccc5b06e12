//! One direction of a simulated transport.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::rand::Rng;
use crate::time::Millis;

/// Behaviour of a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// Time from `send` to delivery.
    pub latency: Millis,
    /// Probability in `[0, 1]` that a sent frame is lost. A WebSocket over TCP never loses a frame and
    /// keeps the connection: use loss only where a lossy or dying transport is what the test is about.
    /// At `1.0` the link is a partition: the sender's close is lost too (as a FIN would be).
    pub drop_probability: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { latency: Millis(1), drop_probability: 0.0 }
    }
}

/// What a link hands to its receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A frame, in the order it was sent.
    Frame(Vec<u8>),
    /// The sender closed the transport; every frame sent before arrived first. Delivered once.
    Closed,
}

/// A one-way, in-order transport with latency, loss and close (a socket direction). Deliveries never
/// overtake each other, like a TCP stream.
#[derive(Clone, Debug)]
pub struct Link {
    config: LinkConfig,
    rng: Rng,
    in_flight: VecDeque<(Millis, Vec<u8>)>,
    /// When the receiver will see the close, once the sender closed.
    close_at: Option<Millis>,
    close_delivered: bool,
    last_delivery: Millis,
    /// Frames accepted by `send` (including lost ones).
    pub sent: u64,
    /// Frames lost by the link.
    pub dropped: u64,
    /// Frames delivered.
    pub delivered: u64,
}

impl Link {
    /// A link whose losses are drawn from `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self {
            config,
            rng: Rng::new(seed),
            in_flight: VecDeque::new(),
            close_at: None,
            close_delivered: false,
            last_delivery: Millis::ZERO,
            sent: 0,
            dropped: 0,
            delivered: 0,
        }
    }

    /// The link's behaviour.
    pub fn config(&self) -> LinkConfig {
        self.config
    }

    /// Changes latency or loss for frames sent from now on.
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Sends a frame at `now`; returns whether it will be delivered (not lost, link not closed).
    pub fn send(&mut self, now: Millis, frame: Vec<u8>) -> bool {
        if self.close_at.is_some() {
            return false;
        }
        self.sent += 1;
        if self.lose() {
            self.dropped += 1;
            return false;
        }
        // In order: a frame never arrives before one sent earlier, even if latency was lowered.
        let at = (now + self.config.latency).max(self.last_delivery);
        self.last_delivery = at;
        self.in_flight.push_back((at, frame));
        true
    }

    fn lose(&mut self) -> bool {
        let p = self.config.drop_probability;
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // 53 random bits give a uniform value in [0, 1).
        let sample = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        sample < p
    }

    /// The sender closes the transport at `now` (idempotent): frames in flight still arrive, then the
    /// receiver sees [`Delivery::Closed`].
    pub fn close(&mut self, now: Millis) {
        if self.close_at.is_some() {
            return;
        }
        if self.config.drop_probability >= 1.0 {
            // Partitioned: the receiver never learns about the close; it has to time out.
            self.close_at = Some(Millis::NEVER);
            self.close_delivered = true;
            return;
        }
        self.close_at = Some((now + self.config.latency).max(self.last_delivery));
    }

    /// The transport breaks at `now`: frames in flight are lost and the receiver sees the close at once.
    pub fn sever(&mut self, now: Millis) {
        self.dropped += self.in_flight.len() as u64;
        self.in_flight.clear();
        if !self.close_delivered {
            self.close_at = Some(now);
        }
    }

    /// Whether the sender has closed (or severed) the link.
    pub fn is_closed(&self) -> bool {
        self.close_at.is_some()
    }

    /// When the next delivery is due.
    pub fn next_delivery(&self) -> Option<Millis> {
        match self.in_flight.front() {
            Some((at, _)) => Some(*at),
            None if !self.close_delivered => self.close_at,
            None => None,
        }
    }

    /// The next delivery due at `now`, if any.
    pub fn poll_delivery(&mut self, now: Millis) -> Option<Delivery> {
        if self.in_flight.front().is_some_and(|(at, _)| *at <= now) {
            let (_, frame) = self.in_flight.pop_front()?;
            self.delivered += 1;
            return Some(Delivery::Frame(frame));
        }
        if self.in_flight.is_empty() && !self.close_delivered && self.close_at.is_some_and(|at| at <= now) {
            self.close_delivered = true;
            return Some(Delivery::Closed);
        }
        None
    }

    /// Nothing is in flight and no close is pending.
    pub fn is_idle(&self) -> bool {
        self.next_delivery().is_none()
    }

    /// Frames in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
