//! One tenant never hurts another (ARCHITECTURE.md invariant 7): the abuse cases that once took a server down
//! for every store, replayed against the real `streamkit serve` (a child process, so its memory is its
//! own), by an attacker holding a token for one store only. Each test measures the growth of the
//! server's peak resident memory while the attack runs and requires every operation of another
//! tenant to succeed meanwhile.
//!
//! The bounds are generous (the machine may be loaded, the allocator keeps what it once held); what
//! they rule out is the unbounded growth of before: gigabytes for the same attacks.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use streamkit::client::{Client, ClientOptions, static_token};
use streamkit::core::api::{ConsumeSegment, Envelope, Metadata, Produce, Record, SubscribeWorkers};
use streamkit::core::wire::{Codec, Message, StreamControl};
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit_tests::process::ChildServer;
use streamkit_tests::raw::RawSocket;
use streamkit_tests::{RuntimeKind, token};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_streamkit-parity-cli"))
}

/// A token for `store` only.
fn token_for(store: Uuid) -> String {
    token(&[&format!("streamkit::{store}")])
}

/// The attacker's raw connection (JSON, like a Go client), writing with a deadline: a server that
/// stops reading must not hang the test.
fn attacker(server: &ChildServer, store: Uuid) -> RawSocket {
    let socket = RawSocket::connect(server.addr, &token_for(store), false).expect("attacker connects");
    socket.set_write_timeout(Some(Duration::from_secs(2)));
    socket
}

fn envelope(codec: Codec, envelope: Envelope) -> Vec<u8> {
    codec.encode_message(&Message::Envelope(envelope))
}

/// The other tenant: for `rounds` rounds, a publish and a listing of its own store, each of which must
/// succeed.
async fn victim_rounds(runtime: &Arc<dyn Runtime>, server: &ChildServer, rounds: usize) {
    let store = Uuid::new_v4();
    let url = format!("ws://{}", server.addr);
    let client =
        Client::connect(runtime.clone(), url, static_token(token_for(store)), ClientOptions::default())
            .await
            .expect("the victim connects");
    for round in 0..rounds {
        let work = async {
            client.publish(store, "victim", "events", format!("round {round}"), Metadata::new()).await?;
            let mut spaces = client.get_spaces(store);
            let mut names = Vec::new();
            while let Some(name) = spaces.next().await {
                names.push(name?);
            }
            Ok::<_, streamkit::client::Error>(names)
        };
        match runtime.timeout(Duration::from_secs(30), work).await {
            Ok(Ok(names)) => assert_eq!(names, ["victim"], "round {round}"),
            Ok(Err(e)) => panic!("the victim's round {round} failed: {e}"),
            Err(_) => panic!("the victim's round {round} timed out"),
        }
        runtime.sleep(Duration::from_millis(100)).await;
    }
    client.close().await;
}

/// Runs `attack` on a thread while the victim works, then checks how much the server's peak memory
/// grew from `baseline`.
fn under_attack(server: &ChildServer, bound: u64, rounds: usize, attack: impl FnOnce() + Send + 'static) {
    server.reset_peak_rss();
    let baseline = server.rss();
    let attacker = std::thread::spawn(attack);
    streamkit_tests::block_on(RuntimeKind::Tokio, |runtime| async move {
        victim_rounds(&runtime, server, rounds).await;
    });
    attacker.join().expect("the attacker thread");
    let growth = server.peak_rss().saturating_sub(baseline);
    eprintln!("server memory: baseline {} MiB, peak growth {} MiB", baseline / MIB, growth / MIB);
    assert!(growth < bound, "the server grew by {} MiB (bound {} MiB)", growth / MIB, bound / MIB);
}

/// Sends frames until `deadline` or until the server stops reading (a write times out) or closes.
fn keep_sending(
    socket: &mut RawSocket,
    deadline: Instant,
    mut next: impl FnMut(&mut RawSocket) -> io::Result<()>,
) {
    while Instant::now() < deadline {
        if next(socket).is_err() {
            // The server stopped reading this socket (its budget) or closed it: the attack is contained.
            break;
        }
    }
}

/// 40 worker streams re-registering over and over with metadata as large as allowed (and once with
/// 10,000 keys), plus observers, on a connection that never reads: every join and leave changes the
/// inventory every subscriber would be sent.
#[test]
fn worker_presence_churn_with_large_metadata_is_bounded() {
    let server = ChildServer::spawn_with(bin(), &["--store", "memory"]);
    let store = Uuid::new_v4();
    let mut socket = attacker(&server, store);
    let codec = socket.codec;
    under_attack(&server, 150 * MIB, 20, move || {
        let huge: Metadata = (0..10_000).map(|i| (format!("key-{i:05}"), "v".repeat(8))).collect();
        let large: Metadata = (0..100).map(|i| (format!("k{i:03}"), "v".repeat(36))).collect();
        let register = |metadata: &Metadata| {
            Envelope::SubscribeWorkers(SubscribeWorkers {
                worker_id: Uuid::new_v4(),
                metadata: metadata.clone(),
                heartbeat_interval_seconds: 1,
            })
        };
        let observer = envelope(codec, Envelope::SubscribeWorkers(SubscribeWorkers::default()));
        for _ in 0..5 {
            let _ = socket.send_data(store, Uuid::new_v4(), observer.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut round = 0;
        keep_sending(&mut socket, deadline, |socket| {
            let metadata = if round == 0 { &huge } else { &large };
            round += 1;
            let channels: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
            for channel in &channels {
                socket.send_data(store, *channel, envelope(codec, register(metadata)))?;
            }
            for channel in &channels {
                socket.send_data(store, *channel, StreamControl::close().encode(codec))?;
            }
            Ok(())
        });
    });
}

/// Six consumes of 3 MiB entries on a connection that never reads them.
#[test]
fn unread_consumes_of_large_entries_are_bounded() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let server = ChildServer::spawn_with(bin(), &["--data", &data_dir, "--durability", "none"]);
    let store = Uuid::new_v4();
    streamkit_tests::block_on(RuntimeKind::Tokio, |runtime| {
        let url = format!("ws://{}", server.addr);
        async move {
            let options = ClientOptions::default().with_codec(Codec::Cbor);
            let client =
                Client::connect(runtime.clone(), url, static_token(token_for(store)), options).await.unwrap();
            for seq in 1..=16u64 {
                let record = Record::new(seq, vec![b'x'; 3 << 20]);
                let mut statuses =
                    client.produce(store, "big", "entries", futures_util::stream::iter([record]));
                while let Some(status) = statuses.next().await {
                    status.expect("setup produce");
                }
            }
            client.close().await;
        }
    });
    let mut socket = attacker(&server, store);
    let codec = socket.codec;
    under_attack(&server, 250 * MIB, 20, move || {
        let request =
            ConsumeSegment { space: "big".into(), segment: "entries".into(), ..ConsumeSegment::default() };
        for _ in 0..6 {
            let _ = socket.send_data(
                store,
                Uuid::new_v4(),
                envelope(codec, Envelope::ConsumeSegment(request.clone())),
            );
        }
        // Never read; keep the connection open while the victim works.
        std::thread::sleep(Duration::from_secs(6));
        drop(socket);
    });
}

/// Records whose metadata maps hold 200,000 keys (2.6 MB of JSON each): refused while decoding.
#[test]
fn records_with_huge_metadata_maps_are_refused_without_growing_memory() {
    let server = ChildServer::spawn_with(bin(), &["--store", "memory"]);
    let store = Uuid::new_v4();
    let mut socket = attacker(&server, store);
    let codec = socket.codec;
    under_attack(&server, 150 * MIB, 10, move || {
        let metadata: String = (0..200_000).map(|i| format!("\"{i}\":\"\",")).collect();
        let channel = Uuid::new_v4();
        let produce = Envelope::Produce(Produce { space: "space".into(), segment: "segment".into() });
        let _ = socket.send_data(store, channel, envelope(codec, produce));
        for seq in 1..=60 {
            let record =
                format!("{{\"sequence\":{seq},\"payload\":null,\"metadata\":{{{}\"last\":\"\"}}}}", metadata);
            if socket.send_data(store, channel, record.into_bytes()).is_err() {
                break;
            }
        }
        // The produce is closed with the decoder's refusal.
        let frame = socket.recv_on(channel).expect("an answer").expect("not closed");
        let text = String::from_utf8_lossy(frame.payload.as_deref().unwrap_or_default()).into_owned();
        assert!(text.contains("map exceeds maximum of 4096 entries"), "{text}");
    });
}

/// A 4 MiB space name with 100 records: refused before anything is written.
#[test]
fn a_huge_space_name_is_refused_before_anything_is_stored() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let server = ChildServer::spawn_with(bin(), &["--data", &data_dir]);
    let store = Uuid::new_v4();
    let mut socket = attacker(&server, store);
    let codec = socket.codec;
    under_attack(&server, 150 * MIB, 5, move || {
        let produce = Envelope::Produce(Produce { space: "s".repeat(4 << 20), segment: "segment".into() });
        let channel = Uuid::new_v4();
        socket.send_data(store, channel, envelope(codec, produce)).expect("the request is sent");
        for seq in 1..=100 {
            let record =
                Record { sequence: seq, payload: Some(Default::default()), metadata: Metadata::new() };
            let _ = socket.send_data(store, channel, codec.encode_message(&Message::Record(record)));
        }
        let frame = socket.recv_on(channel).expect("an answer").expect("not closed");
        let control =
            StreamControl::parse(codec, frame.payload.as_deref().unwrap_or_default()).expect("a close");
        assert_eq!(control, StreamControl::close_with("space exceeds maximum of 256 bytes"));
    });
    let written: u64 = walk(data.path());
    assert!(written < 16 * MIB, "{} MiB written to the data directory", written / MIB);
}

/// Bytes of the files under `dir`.
fn walk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
