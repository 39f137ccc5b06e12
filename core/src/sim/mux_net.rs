//! Client and server mux sessions wired over simulated links.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use uuid::Uuid;

use super::clock::{Clock, earliest};
use super::link::{Delivery, Link, LinkConfig};
use crate::auth::StoreScopes;
use crate::mux::{EndReason, MuxConfig, MuxEvent, MuxSession, Role, StreamEnd, StreamInput};
use crate::rand::Rng;
use crate::time::Millis;
use crate::wire::Codec;

/// Something an [`Endpoint`] observed, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// An event drained from `poll_event`.
    Event(MuxEvent),
    /// An item popped with `recv`.
    Item(Uuid, StreamInput),
}

/// One session plus a minimal application: it drains events after every input and, unless told to
/// hold a stream, pops every readable item (like an application that keeps up).
#[derive(Debug)]
pub struct Endpoint {
    /// The session under test.
    pub session: MuxSession,
    /// Everything observed, in order.
    pub log: Vec<Observed>,
    /// Items popped so far, per stream.
    pub received: BTreeMap<Uuid, Vec<StreamInput>>,
    /// Pop readable items automatically.
    pub auto_recv: bool,
    /// Streams whose items are left queued (a slow reader) until [`Endpoint::recv_all`].
    pub held: BTreeSet<Uuid>,
    cursor: usize,
}

impl Endpoint {
    /// Wraps a session; auto-receive is on.
    pub fn new(session: MuxSession) -> Self {
        Self {
            session,
            log: Vec::new(),
            received: BTreeMap::new(),
            auto_recv: true,
            held: BTreeSet::new(),
            cursor: 0,
        }
    }

    /// Pops every queued item of `channel`; returns how many.
    pub fn recv_all(&mut self, channel: Uuid) -> usize {
        let mut count = 0;
        while let Some(item) = self.session.recv(channel) {
            self.log.push(Observed::Item(channel, item.clone()));
            self.received.entry(channel).or_default().push(item);
            count += 1;
        }
        count
    }

    /// Everything observed since the previous call.
    pub fn take_new(&mut self) -> Vec<Observed> {
        let new = self.log.get(self.cursor..).map(<[Observed]>::to_vec).unwrap_or_default();
        self.cursor = self.log.len();
        new
    }

    /// Events observed so far.
    pub fn events(&self) -> impl Iterator<Item = &MuxEvent> {
        self.log.iter().filter_map(|o| match o {
            Observed::Event(e) => Some(e),
            Observed::Item(..) => None,
        })
    }

    /// Channels opened by the peer (server role), in order.
    pub fn opened(&self) -> Vec<Uuid> {
        self.events()
            .filter_map(|e| match e {
                MuxEvent::Opened { channel, .. } => Some(*channel),
                _ => None,
            })
            .collect()
    }

    /// Payloads popped from `channel`, in order.
    pub fn payloads(&self, channel: Uuid) -> Vec<&[u8]> {
        self.received
            .get(&channel)
            .into_iter()
            .flatten()
            .filter_map(|i| match i {
                StreamInput::Payload(p) => Some(p.as_slice()),
                StreamInput::End(_) => None,
            })
            .collect()
    }

    /// How `channel`'s receive side ended, if it did.
    pub fn end(&self, channel: Uuid) -> Option<&StreamEnd> {
        self.received.get(&channel)?.iter().find_map(|i| match i {
            StreamInput::End(end) => Some(end),
            StreamInput::Payload(_) => None,
        })
    }

    /// Why the session aborted `channel`, if it did.
    pub fn aborted(&self, channel: Uuid) -> Option<&EndReason> {
        self.events().find_map(|e| match e {
            MuxEvent::Aborted { channel: c, reason } if *c == channel => Some(reason),
            _ => None,
        })
    }

    /// The shutdown reason, once the session shut down.
    pub fn shutdown_reason(&self) -> Option<&EndReason> {
        self.events().find_map(|e| match e {
            MuxEvent::Shutdown { reason } => Some(reason),
            _ => None,
        })
    }

    /// Data frames of `channel` reported by `Sent` so far.
    pub fn sent_frames(&self, channel: Uuid) -> u64 {
        self.events()
            .map(|e| match e {
                MuxEvent::Sent { channel: c, frames, .. } if *c == channel => u64::from(*frames),
                _ => 0,
            })
            .sum()
    }

    /// Drains events and transmits at `now` (what an adapter does after every input); once the session
    /// is shut down and flushed, closes the outgoing link like an adapter closes its socket.
    pub fn pump(&mut self, now: Millis, out: &mut Link) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.session.poll_event() {
                progressed = true;
                let readable = match &event {
                    MuxEvent::Readable { channel } => Some(*channel),
                    _ => None,
                };
                self.log.push(Observed::Event(event));
                if let Some(channel) = readable
                    && self.auto_recv
                    && !self.held.contains(&channel)
                {
                    self.recv_all(channel);
                }
            }
            while let Some(frame) = self.session.poll_transmit() {
                progressed = true;
                out.send(now, frame);
            }
            if !progressed {
                break;
            }
        }
        if self.session.is_shut_down() && !self.session.has_transmit() {
            out.close(now);
        }
    }

    /// Hands one link delivery to the session.
    pub fn deliver(&mut self, now: Millis, delivery: Delivery) {
        match delivery {
            Delivery::Frame(bytes) => self.session.handle_frame(now, &bytes),
            Delivery::Closed => self.session.handle_transport_closed(now, EndReason::MuxerClosed),
        }
    }

    /// Calls `handle_timeout` if the session's deadline has come.
    pub fn fire_timeout(&mut self, now: Millis) {
        if self.session.poll_timeout().is_some_and(|(at, _)| at <= now) {
            self.session.handle_timeout(now);
        }
    }
}

/// One connection: a client session and a server session over two links.
#[derive(Debug)]
pub struct MuxPair {
    /// The client end.
    pub client: Endpoint,
    /// The server end.
    pub server: Endpoint,
    /// Client → server.
    pub to_server: Link,
    /// Server → client.
    pub to_client: Link,
}

impl MuxPair {
    /// Drains both sessions into their links and logs.
    pub fn pump(&mut self, now: Millis) {
        self.client.pump(now, &mut self.to_server);
        self.server.pump(now, &mut self.to_client);
    }

    /// The earliest session deadline or link delivery.
    pub fn next_time(&self) -> Option<Millis> {
        earliest([
            self.client.session.poll_timeout().map(|(t, _)| t),
            self.server.session.poll_timeout().map(|(t, _)| t),
            self.to_server.next_delivery(),
            self.to_client.next_delivery(),
        ])
    }

    /// Delivers everything due at `now`, then fires due timers, draining after every input.
    pub fn process(&mut self, now: Millis) {
        loop {
            let mut delivered = false;
            if let Some(d) = self.to_server.poll_delivery(now) {
                self.server.deliver(now, d);
                delivered = true;
            }
            if let Some(d) = self.to_client.poll_delivery(now) {
                self.client.deliver(now, d);
                delivered = true;
            }
            self.pump(now);
            if !delivered {
                break;
            }
        }
        self.client.fire_timeout(now);
        self.server.fire_timeout(now);
        self.pump(now);
    }

    /// Nothing in flight and nothing waiting to be written.
    pub fn is_quiet(&self) -> bool {
        self.to_server.is_idle()
            && self.to_client.is_idle()
            && !self.client.session.has_transmit()
            && !self.server.session.has_transmit()
    }

    /// The transport breaks: frames in flight are lost and both ends see the connection close.
    pub fn disconnect(&mut self, now: Millis) {
        self.to_server.sever(now);
        self.to_client.sever(now);
    }
}

/// Configuration of a [`MuxNet`].
#[derive(Clone, Debug)]
pub struct MuxNetConfig {
    /// Number of connections (client sessions, each with its server session).
    pub clients: usize,
    /// Codec of every connection.
    pub codec: Codec,
    /// Configuration of the client sessions.
    pub client_config: MuxConfig,
    /// Configuration of the server sessions.
    pub server_config: MuxConfig,
    /// Scopes of every connection's token.
    pub scopes: StoreScopes,
    /// Both directions of every connection.
    pub link: LinkConfig,
    /// Seed of everything random.
    pub seed: u64,
    /// Virtual start time.
    pub start: Millis,
    /// Step budget before the run is declared livelocked.
    pub max_steps: u64,
}

impl Default for MuxNetConfig {
    fn default() -> Self {
        Self {
            clients: 1,
            codec: Codec::Json,
            client_config: MuxConfig::default(),
            server_config: MuxConfig::default(),
            scopes: StoreScopes::All,
            link: LinkConfig::default(),
            seed: 1,
            start: Millis(1_700_000_000_000),
            max_steps: 100_000,
        }
    }
}

/// Several connections driven by one virtual clock.
#[derive(Debug)]
pub struct MuxNet {
    /// The shared clock.
    pub clock: Clock,
    /// The connections.
    pub pairs: Vec<MuxPair>,
}

impl MuxNet {
    /// Builds the connections; every session and link gets its own seed derived from `config.seed`.
    pub fn new(config: MuxNetConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let now = config.start;
        let pairs = (0..config.clients)
            .map(|_| {
                let client = MuxSession::new(
                    Role::Client,
                    config.codec,
                    config.client_config.clone(),
                    now,
                    rng.next_u64(),
                );
                let server = MuxSession::new(
                    Role::Server { scopes: config.scopes.clone() },
                    config.codec,
                    config.server_config.clone(),
                    now,
                    rng.next_u64(),
                );
                MuxPair {
                    client: Endpoint::new(client),
                    server: Endpoint::new(server),
                    to_server: Link::new(config.link, rng.next_u64()),
                    to_client: Link::new(config.link, rng.next_u64()),
                }
            })
            .collect();
        Self { clock: Clock::new(now, config.max_steps), pairs }
    }

    /// The current virtual time.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Connection `i`.
    ///
    /// # Panics
    ///
    /// If there is no such connection (a test bug).
    pub fn pair(&mut self, i: usize) -> &mut MuxPair {
        &mut self.pairs[i]
    }

    /// Drains every session at the current time.
    pub fn pump(&mut self) {
        let now = self.clock.now();
        self.pairs.iter_mut().for_each(|p| p.pump(now));
    }

    /// The earliest deadline or delivery of any connection.
    pub fn next_time(&self) -> Option<Millis> {
        earliest(self.pairs.iter().map(MuxPair::next_time))
    }

    /// One step: drain, advance time to the earliest deadline or delivery, process it. Returns `false`
    /// when nothing is left to happen at all.
    pub fn step(&mut self) -> bool {
        self.clock.step();
        self.pump();
        let Some(next) = self.next_time() else { return false };
        self.clock.advance_to(next);
        let now = self.clock.now();
        self.pairs.iter_mut().for_each(|p| p.process(now));
        true
    }

    /// Runs everything due within `duration`, then sets the clock to the end of it.
    pub fn run_for(&mut self, duration: Millis) {
        let deadline = self.clock.now() + duration;
        loop {
            self.pump();
            match self.next_time() {
                Some(at) if at <= deadline => {
                    self.step();
                }
                _ => break,
            }
        }
        self.clock.advance_to(deadline);
    }

    /// Runs until no frame is in flight or waiting to be written on any connection.
    pub fn settle(&mut self) {
        loop {
            self.pump();
            if self.pairs.iter().all(MuxPair::is_quiet) {
                break;
            }
            if !self.step() {
                break;
            }
        }
    }

    /// Breaks connection `i` (both directions lose what is in flight and report a close).
    pub fn disconnect(&mut self, i: usize) {
        let now = self.clock.now();
        if let Some(pair) = self.pairs.get_mut(i) {
            pair.disconnect(now);
        }
    }
}
