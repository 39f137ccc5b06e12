//! A real server on loopback driven by the core's client connection over a real WebSocket: produce,
//! consume and the handshake, on tokio (the other runtimes are covered by the SDK and parity suites).

use std::sync::Arc;
use std::time::Duration;

use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::clock::WallClock;
use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::server::{ServerConfig, start};
use streamkit::store::StoreFactory;
use streamkit::ws::{DialOptions, dial};
use streamkit_proto::api::{ConsumeSegment, Produce, Record, Request};
use streamkit_proto::client::{ClientConnection, ClientEvent, ClientItem};
use streamkit_proto::mux::MuxConfig;
use streamkit_proto::stream::StreamEnd;
use streamkit_proto::wire::{Codec, Message};
use uuid::Uuid;

const SECRET: &[u8] = b"top-secret";

async fn roundtrip(codec: Codec) {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        JwtVerifier::hs256(SECRET).unwrap(),
        StoreFactory::embedded(dir.path(), Default::default()),
    );
    let server = start(runtime.clone(), config).await.unwrap();
    let token = TokenSigner::hs256(SECRET)
        .unwrap()
        .sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60)))
        .unwrap();
    let url = format!("ws://{}", server.local_addr());
    let mut ws =
        dial(&*runtime, &url, &DialOptions::new(token).with_cbor(codec == Codec::Cbor)).await.unwrap();
    let clock = WallClock::default();
    let mut conn = ClientConnection::new(codec, MuxConfig::default(), clock.now(), 1);
    let store = Uuid::new_v4();

    // Produce 1..=100 and wait for the status and the end.
    let produce = conn
        .open(clock.now(), store, Request::Produce(Produce { space: "sp".into(), segment: "sg".into() }))
        .unwrap();
    for seq in 1..=100 {
        conn.send(clock.now(), produce, &Message::Record(Record::new(seq, format!("r{seq}")))).unwrap();
    }
    conn.close_send(clock.now(), produce, None).unwrap();
    let mut received = Vec::new();
    let consume = loop {
        while let Some(frame) = conn.poll_transmit() {
            ws.feed(frame).await.unwrap();
        }
        ws.flush().await.unwrap();
        let bytes = ws.recv().await.unwrap().expect("connection open");
        conn.handle_frame(clock.now(), &bytes);
        let mut done = None;
        while let Some(event) = conn.poll_event() {
            if let ClientEvent::Readable { channel } = event {
                while let Some(item) = conn.recv(channel) {
                    match item {
                        ClientItem::End(end) => done = Some((channel, end)),
                        ClientItem::Message(m) => received.push(m),
                        ClientItem::Invalid(e) => panic!("{e}"),
                    }
                }
            }
        }
        if let Some((channel, end)) = done {
            assert_eq!(channel, produce);
            assert_eq!(end, StreamEnd::Finished);
            break conn
                .open(
                    clock.now(),
                    store,
                    Request::ConsumeSegment(ConsumeSegment {
                        space: "sp".into(),
                        segment: "sg".into(),
                        ..Default::default()
                    }),
                )
                .unwrap();
        }
    };
    assert!(matches!(&received[..], [Message::Status(s)] if s.last_sequence == 100));
    received.clear();
    loop {
        while let Some(frame) = conn.poll_transmit() {
            ws.feed(frame).await.unwrap();
        }
        ws.flush().await.unwrap();
        let bytes = ws.recv().await.unwrap().expect("connection open");
        conn.handle_frame(clock.now(), &bytes);
        let mut ended = false;
        while let Some(event) = conn.poll_event() {
            if let ClientEvent::Readable { channel } = event {
                while let Some(item) = conn.recv(channel) {
                    match item {
                        ClientItem::End(end) => {
                            assert_eq!((channel, end), (consume, StreamEnd::Finished));
                            ended = true;
                        }
                        ClientItem::Message(m) => received.push(m),
                        ClientItem::Invalid(e) => panic!("{e}"),
                    }
                }
            }
        }
        if ended {
            break;
        }
    }
    let seqs: Vec<u64> = received
        .iter()
        .map(|m| match m {
            Message::Entry(e) => e.sequence,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_over_json() {
    roundtrip(Codec::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_over_cbor() {
    roundtrip(Codec::Cbor).await;
}
