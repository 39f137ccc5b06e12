//! PROTOCOL.md §9.3 "live resilience", over WebSocket: the server restarts (same port, same data directory)
//! while operations are open.
//!
//! * a consume-segment, consume-space or multi-space consume that loses its connection ends with an
//!   error (it is not resumed), and a new one from the saved cursor (`min_sequence = last + 1`,
//!   `offset = last.space_offset()`, per-space offsets) yields exactly the remaining entries;
//! * publish works again after the restart (the client redials on its next operation);
//! * segment and space subscriptions do not survive the restart; new ones get the current snapshot;
//! * after a restart with a new JWT key, a client whose token source signs with the new key carries on
//!   (resume, publish), and an old token is refused with 401.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::client::{Client, ClientOptions, EntryStream, ErrorKind, SubscribeOptions, static_token};
use streamkit::core::api::{Consume, ConsumeSpace, Entry, Metadata};
use streamkit::core::lexkey::LexKey;
use streamkit::server::ServerConfig;
use streamkit_tests::{Env, collect};

use super::common::*;

across_all!(@one tokio_json, TOKIO_JSON, restart_during_operations);
across_all!(@one tokio_cbor, TOKIO_CBOR, restart_during_operations);
across_all!(@one smol_cbor, SMOL_CBOR, restart_during_operations);
across_all!(@one async_std_json, ASYNC_STD_JSON, restart_during_operations);

/// Entries per segment of the resilience data set, and their payload size: large enough (2 x 6 MiB) that
/// a read cannot sit complete in socket buffers when the server goes away (reads seen here were cut
/// after at most 3 MiB).
const PER_SEGMENT: u64 = 1500;
const PAYLOAD: usize = 4096;

fn payload(tag: &'static str) -> impl Fn(u64) -> Vec<u8> + Send + 'static {
    move |seq| {
        let mut bytes = format!("{tag}-{seq}-").into_bytes();
        bytes.resize(PAYLOAD, b'.');
        bytes
    }
}

/// Reads `count` entries, restarts the server, then reads on: the read must end with a connection
/// error before its end. Returns every entry it yielded.
async fn read_across_restart(env: &Env, mut stream: EntryStream, count: usize, total: usize) -> Vec<Entry> {
    let mut read = Vec::new();
    for _ in 0..count {
        read.push(env.step("entry before the restart", stream.next()).await.unwrap().unwrap());
    }
    env.restart().await;
    let (rest, error) = collect(env.runtime(), stream).await;
    read.extend(rest);
    let error =
        error.unwrap_or_else(|| panic!("a read that loses its connection fails (read {})", read.len()));
    eprintln!("read ended after {} of {total} entries with: {error}", read.len());
    assert!(
        matches!(error.kind(), ErrorKind::Connection | ErrorKind::RemoteClosed),
        "{error} ({:?})",
        error.kind()
    );
    assert!(read.len() < total, "the read cannot have finished");
    read
}

/// Resumes a read from its cursor the way a caller does after losing its connection: the read must
/// end cleanly; an attempt that fails with a transient error before yielding anything (the client
/// learns that its old connection is gone a moment after the stream that told it) is tried again.
async fn resume(env: &Env, read: impl Fn() -> EntryStream) -> Vec<Entry> {
    for attempt in 1.. {
        let (entries, error) = collect(env.runtime(), read()).await;
        match error {
            None => return entries,
            Some(error) if entries.is_empty() && error.is_retryable() && attempt < 10 => {
                eprintln!("resume attempt {attempt} failed with {error}; retrying");
                env.sleep(Duration::from_millis(50)).await;
            }
            Some(error) => panic!("the resumed read failed after {} entries: {error}", entries.len()),
        }
    }
    unreachable!()
}

async fn restart_during_operations(env: Env) {
    let client = env.client().clone();
    let store = env.store();
    // Produce seg-a and seg-b in alternating batches, so that their timestamps interleave in the space.
    for batch in 0..PER_SEGMENT / 500 {
        let range = batch * 500 + 1..=(batch + 1) * 500;
        produce_with(&env, &client, "res", "seg-a", range.clone(), payload("a")).await;
        produce_with(&env, &client, "res", "seg-b", range, payload("b")).await;
    }
    produce_with(&env, &client, "res2", "seg-c", 1..=100, payload("c")).await;
    let full_space = consume_space(&env, &client, "res", LexKey::default()).await;
    assert_eq!(full_space.len() as u64, 2 * PER_SEGMENT);

    // A small answer buffer keeps most of each read in flight when the server goes away.
    let reader = env.new_client_with(ClientOptions { stream_buffer: 4, ..ClientOptions::default() }).await;

    // Subscriptions opened before the restart get their snapshots...
    let mut segment_sub = env
        .step("subscribe", reader.subscribe_segment(store, "res", "seg-a", SubscribeOptions::default()))
        .await
        .unwrap();
    let mut space_sub = env
        .step("subscribe", reader.subscribe_space(store, "res", SubscribeOptions::default()))
        .await
        .unwrap();
    assert_eq!(env.step("snapshot", segment_sub.next()).await.unwrap().unwrap().last_sequence, PER_SEGMENT);
    for segment in ["seg-a", "seg-b"] {
        let status = env.step("snapshot", space_sub.next()).await.unwrap().unwrap();
        assert_eq!((status.segment.as_str(), status.last_sequence), (segment, PER_SEGMENT));
    }
    assert_eq!(env.metric("streamkit_subscriptions_active"), 2.0);

    // 1. ConsumeSegment: resume with min_sequence = last + 1.
    let stream = reader.consume_segment(store, segment_request("res", "seg-a"));
    let read = read_across_restart(&env, stream, 10, PER_SEGMENT as usize).await;
    assert_eq!(sequences(&read), (1..=read.len() as u64).collect::<Vec<_>>(), "in order, nothing skipped");
    let last = read.last().unwrap().sequence;
    let mut request = segment_request("res", "seg-a");
    request.min_sequence = last + 1;
    let rest = resume(&env, || reader.consume_segment(store, request.clone())).await;
    assert_eq!(
        sequences(&rest),
        (last + 1..=PER_SEGMENT).collect::<Vec<_>>(),
        "exactly the remaining entries"
    );
    assert!(rest.iter().all(|e| e.payload == Some(payload("a")(e.sequence).into())));

    // The subscriptions did not survive that restart: they end with an error, the new server has none.
    for (name, subscription) in [("segment", segment_sub), ("space", space_sub)] {
        let (statuses, error) = collect(env.runtime(), subscription).await;
        let error =
            error.unwrap_or_else(|| panic!("the {name} subscription ends with an error after {statuses:?}"));
        assert!(matches!(error.kind(), ErrorKind::Connection | ErrorKind::RemoteClosed), "{name}: {error}");
    }
    assert_eq!(env.metric("streamkit_subscriptions_active"), 0.0);

    // 2. ConsumeSpace: resume strictly after the space offset of the last entry read.
    let request = ConsumeSpace { space: "res".into(), ..ConsumeSpace::default() };
    let read = read_across_restart(&env, reader.consume_space(store, request), 10, full_space.len()).await;
    assert_eq!(positions(&read), positions(&full_space[..read.len()]), "the same order as a full read");
    let offset = read.last().unwrap().space_offset();
    let request = ConsumeSpace { space: "res".into(), offset, ..ConsumeSpace::default() };
    let rest = resume(&env, || reader.consume_space(store, request.clone())).await;
    assert_eq!(positions(&rest), positions(&full_space[read.len()..]), "exactly the remaining entries");

    // 3. Consume (two spaces merged): resume each space after the last entry read from it.
    let offsets: BTreeMap<String, LexKey> =
        [("res".to_owned(), LexKey::default()), ("res2".to_owned(), LexKey::default())].into();
    let total = full_space.len() + 100;
    let stream = reader.consume(store, Consume { offsets: offsets.clone(), ..Consume::default() });
    let read = read_across_restart(&env, stream, 10, total).await;
    assert_merged_order(&read);
    let mut offsets = offsets;
    for entry in &read {
        offsets.insert(entry.space.clone(), entry.space_offset());
    }
    let request = Consume { offsets, ..Consume::default() };
    let rest = resume(&env, || reader.consume(store, request.clone())).await;
    let key = |e: &Entry| (e.space.clone(), e.segment.clone(), e.sequence);
    let read_keys: BTreeSet<_> = read.iter().map(key).collect();
    let rest_keys: BTreeSet<_> = rest.iter().map(key).collect();
    assert_eq!(read_keys.len() + rest_keys.len(), total, "no entry twice");
    assert!(read_keys.is_disjoint(&rest_keys));
    let all: BTreeSet<_> = read_keys.union(&rest_keys).cloned().collect();
    let expected: BTreeSet<_> = full_space
        .iter()
        .map(key)
        .chain((1..=100).map(|s| ("res2".to_owned(), "seg-c".to_owned(), s)))
        .collect();
    assert_eq!(all, expected, "exactly the remaining entries");

    // Publish works again after the restart (this client's connection was also lost).
    let status = env
        .step(
            "publish after restart",
            client.publish(store, "res", "seg-a", b"after".to_vec(), Metadata::new()),
        )
        .await
        .unwrap();
    assert_eq!(status.last_sequence, PER_SEGMENT + 1);
    assert_eq!(env.step("peek", client.peek(store, "res", "seg-a")).await.unwrap().sequence, PER_SEGMENT + 1);

    // New subscriptions get the current snapshot.
    check_fresh_subscriptions(&env, &reader).await;
}

async fn check_fresh_subscriptions(env: &Env, client: &Client) {
    let store = env.store();
    let mut segment_sub = env
        .step("subscribe", client.subscribe_segment(store, "res", "seg-a", SubscribeOptions::default()))
        .await
        .unwrap();
    let status = env.step("snapshot", segment_sub.next()).await.unwrap().unwrap();
    assert_eq!((status.first_sequence, status.last_sequence), (1, PER_SEGMENT + 1));
    let mut space_sub = env
        .step("subscribe", client.subscribe_space(store, "res", SubscribeOptions::default()))
        .await
        .unwrap();
    let a = env.step("snapshot", space_sub.next()).await.unwrap().unwrap();
    let b = env.step("snapshot", space_sub.next()).await.unwrap().unwrap();
    assert_eq!((a.segment.as_str(), a.last_sequence), ("seg-a", PER_SEGMENT + 1));
    assert_eq!((b.segment.as_str(), b.last_sequence), ("seg-b", PER_SEGMENT));
    assert_eq!(env.metric("streamkit_subscriptions_active"), 2.0);
    // And then live updates.
    produce_with(env, client, "res", "seg-b", PER_SEGMENT + 1..=PER_SEGMENT + 1, payload("b")).await;
    assert_eq!(
        env.step("live update", space_sub.next()).await.unwrap().unwrap().last_sequence,
        PER_SEGMENT + 1
    );
}

// -------------------------------------------------------------------------------------------------
// auth-key rotation

#[test]
fn key_rotation_tokio_json() {
    key_rotation(streamkit_tests::Config::TOKIO_JSON);
}

#[test]
fn key_rotation_smol_cbor() {
    key_rotation(streamkit_tests::Config::SMOL_CBOR);
}

/// The server restarts with a new JWT key: an open consume ends with an error; a client whose token
/// source signs with the current key redials and publishes again; a client holding an old token is
/// refused (401) and not retried.
fn key_rotation(config: streamkit_tests::Config) {
    // The first key is the suite's, so the scenario's own client connects as usual.
    let secret = Arc::new(Mutex::new(streamkit_tests::SECRET.to_vec()));
    let server_secret = secret.clone();
    let adjust = move |server: &mut ServerConfig| {
        server.authenticator = Arc::new(JwtVerifier::hs256(&server_secret.lock().unwrap()).unwrap());
    };
    streamkit_tests::run_with(config, adjust, |env| async move {
        let signing = secret.clone();
        let tokens = move || {
            let key = signing.lock().unwrap().clone();
            let claims = TokenClaims::new(["streamkit::*"], Duration::from_secs(60));
            std::future::ready(TokenSigner::hs256(&key).unwrap().sign(&claims))
        };
        let options = ClientOptions { stream_buffer: 4, ..ClientOptions::default() }
            .with_codec(config.transport.codec());
        let client = Client::connect(env.runtime().clone(), env.url(), tokens, options).await.unwrap();
        let old_token = streamkit_tests::admin_token();
        let store = env.store();
        produce_with(&env, &client, "rot", "seg", 1..=1500, payload("r")).await;

        let stream = client.consume_segment(store, segment_request("rot", "seg"));
        *secret.lock().unwrap() = b"second key".to_vec();
        let read = read_across_restart(&env, stream, 10, 1500).await;
        let mut request = segment_request("rot", "seg");
        request.min_sequence = read.last().unwrap().sequence + 1;
        let rest = resume(&env, || client.consume_segment(store, request.clone())).await;
        assert_eq!(read.len() + rest.len(), 1500, "resumed with a fresh token");

        let status = env
            .step(
                "publish after rotation",
                client.publish(store, "rot", "seg", b"x".to_vec(), Metadata::new()),
            )
            .await
            .unwrap();
        assert_eq!(status.last_sequence, 1501);

        let options = ClientOptions::default().with_codec(config.transport.codec());
        let refused = env
            .step(
                "a dial with the old token",
                Client::connect(env.runtime().clone(), env.url(), static_token(old_token), options),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Unauthorized, "{refused}");
        client.close().await;
    });
}
