//! The sans-IO core driven by hand: a client connection, a server connection and the engine, wired
//! together in one loop with no socket, no clock, no thread and no async runtime. This is the whole
//! contract an embedder implements on a platform of its own (the `streamkit` crate's adapters do the
//! same on tokio, smol and async-std; the `nostd-check` crate links these types without `std`):
//!
//! * bytes a connection wants to send come out of `poll_transmit`; bytes that arrive go into
//!   `handle_frame`;
//! * the server connection hands typed requests to the engine (`poll_engine_input` →
//!   `handle_input`) and takes its answers back (`EngineEffect::Output` → `handle_engine`);
//! * the engine asks for storage and bus work as effects (`poll_effect`) and takes the results
//!   (`handle_storage`, `handle_bus`, `handle_store_opened`); here a `MemoryKv` per store does the
//!   storage and, with a single server, the bus just acknowledges;
//! * time is a number passed in (`now`); `poll_timeout` says when to call `handle_timeout`.
//!
//! `cargo run -p streamkit-proto --example sans_io` prints every frame (JSON, as the Go client and
//! server write them) of a produce of two records and a peek.

use std::collections::HashMap;

use streamkit_proto::Millis;
use streamkit_proto::api::{Peek, Produce, Record, Request};
use streamkit_proto::auth::StoreScopes;
use streamkit_proto::client::{ClientConnection, ClientItem};
use streamkit_proto::mux::{MuxConfig, MuxSession, Role};
use streamkit_proto::node::{BusCommand, BusEvent};
use streamkit_proto::server::{Engine, EngineConfig, EngineEffect, ServerConnection};
use streamkit_proto::storage::{MemoryKv, OrderedKv};
use streamkit_proto::wire::{Codec, Message};
use uuid::Uuid;

/// Everything of a one-server, one-client system.
struct System {
    now: Millis,
    client: ClientConnection,
    server: ServerConnection,
    engine: Engine,
    stores: HashMap<Uuid, MemoryKv>,
}

impl System {
    fn new() -> Self {
        let now = Millis(1_700_000_000_000);
        let scopes = StoreScopes::from_scopes(&["streamkit::*"]).expect("a valid scope");
        let server_mux = MuxSession::new(Role::Server { scopes }, Codec::Json, MuxConfig::default(), now, 2);
        Self {
            now,
            client: ClientConnection::new(Codec::Json, MuxConfig::default(), now, 1),
            server: ServerConnection::new(1, server_mux),
            engine: Engine::new(EngineConfig::default(), now, 3),
            stores: HashMap::new(),
        }
    }

    /// Moves frames, engine inputs and effects until nothing is left to do.
    fn run_until_idle(&mut self) {
        let now = self.now;
        loop {
            let mut progressed = false;
            while let Some(frame) = self.client.poll_transmit() {
                println!("client → server  {}", String::from_utf8_lossy(&frame));
                self.server.handle_frame(now, &frame);
                progressed = true;
            }
            while let Some((_store, input)) = self.server.poll_engine_input() {
                self.engine.handle_input(now, input);
                progressed = true;
            }
            while let Some(effect) = self.engine.poll_effect() {
                self.execute(effect);
                progressed = true;
            }
            while let Some(frame) = self.server.poll_transmit() {
                println!("server → client  {}", String::from_utf8_lossy(&frame));
                self.client.handle_frame(now, &frame);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    /// Executes one effect of the engine at once (a real adapter runs storage on worker threads and
    /// feeds the result back whenever it completes).
    fn execute(&mut self, effect: EngineEffect) {
        let now = self.now;
        match effect {
            EngineEffect::Output(output) => self.server.handle_engine(now, output),
            EngineEffect::OpenStore { store } => {
                self.stores.entry(store).or_default();
                self.engine.handle_store_opened(now, store, Ok(()));
            }
            EngineEffect::Storage { store, op, request } => {
                let result = self.stores.entry(store).or_default().execute(&request);
                self.engine.handle_storage(now, store, op, result);
            }
            // One server: there is no other instance to tell, so bus work succeeds at once.
            EngineEffect::Bus { store, command } => match command {
                BusCommand::Subscribe { op, .. } => {
                    self.engine.handle_bus(now, store, BusEvent::Subscribed { op, result: Ok(()) })
                }
                BusCommand::Publish { op, .. } | BusCommand::Announce { op, .. } => {
                    self.engine.handle_bus(now, store, BusEvent::Published { op, result: Ok(()) })
                }
                BusCommand::Unsubscribe { .. } => {}
            },
            // Metrics and logs of an adapter.
            EngineEffect::CloseStore { .. }
            | EngineEffect::Produced { .. }
            | EngineEffect::Refused { .. }
            | EngineEffect::Ended { .. } => {}
        }
    }

    /// Everything the client received on `channel`.
    fn answers(&mut self, channel: Uuid) -> Vec<ClientItem> {
        std::iter::from_fn(|| self.client.recv(channel)).collect()
    }
}

fn main() {
    let mut system = System::new();
    let store = Uuid::from_u128(0x5eed);
    let now = system.now;

    println!("-- produce two records");
    let produce = Request::Produce(Produce { space: "orders".into(), segment: "order-42".into() });
    let channel = system.client.open(now, store, produce).expect("the connection is open");
    for sequence in 1..=2 {
        let record = Record::new(sequence, format!("event {sequence}"));
        system.client.send(now, channel, &Message::Record(record)).expect("the stream is open");
    }
    system.client.close_send(now, channel, None).expect("the stream is open");
    system.run_until_idle();
    let statuses = system.answers(channel);
    assert!(
        statuses
            .iter()
            .any(|item| matches!(item, ClientItem::Message(Message::Status(s)) if s.last_sequence == 2)),
        "{statuses:?}"
    );

    println!("-- peek");
    let peek = Request::Peek(Peek { space: "orders".into(), segment: "order-42".into() });
    let channel = system.client.open(now, store, peek).expect("the connection is open");
    system.run_until_idle();
    let head = system.answers(channel);
    assert!(
        head.iter().any(|item| matches!(item, ClientItem::Message(Message::Entry(e)) if e.sequence == 2)),
        "{head:?}"
    );
    println!("-- the head of orders/order-42 is sequence 2");
}
