//! Client behaviour at the edges: exact error texts, publish serialisation, reconnect after a server
//! restart, refused tokens, and inbound flow control with slow consumers.
#![cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]

use crate::client_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use client_support::*;
use futures_util::StreamExt;
use streamkit::client::{Client, ClientOptions, ErrorKind, RetryPolicy, SubscribeOptions, static_token};
use streamkit::core::api::{ConsumeSegment, Metadata, Record};
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit::server::{ServerConfig, start};
use streamkit::store::StoreFactory;
use uuid::Uuid;

fn records(
    range: std::ops::RangeInclusive<u64>,
    size: usize,
) -> impl futures_core::Stream<Item = Record> + Send {
    futures_util::stream::iter(range.map(move |seq| Record::new(seq, vec![b'x'; size])))
}

async fn access_denied_outside_the_token_scope(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let allowed = Uuid::new_v4();
    let scope = format!("streamkit::{allowed}");
    let client = Client::connect(
        runtime.clone(),
        url(&server),
        static_token(token(&[&scope])),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(step(&runtime, client.peek(allowed, "s", "g")).await.unwrap().sequence, 0);
    let started = Instant::now();
    let denied = step(&runtime, client.peek(Uuid::new_v4(), "s", "g")).await.unwrap_err();
    assert_eq!(denied.to_string(), "remote error: access denied");
    assert_eq!(denied.kind(), ErrorKind::AccessDenied);
    assert!(!denied.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(1), "a permanent error is not retried");
    let (_, error) = collect(&runtime, client.get_spaces(Uuid::new_v4())).await;
    assert_eq!(error.unwrap().to_string(), "remote error: access denied");
    client.close().await;
    server.shutdown().await;
}

async fn concurrent_publishes_get_increasing_sequences(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    let store = Uuid::new_v4();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            runtime.spawn(async move {
                client
                    .publish(store, "space", "segment", format!("p{i}"), Metadata::new())
                    .await
                    .unwrap()
                    .last_sequence
            })
        })
        .collect();
    let mut sequences = Vec::new();
    for task in tasks {
        sequences.push(step(&runtime, task).await.unwrap());
    }
    sequences.sort_unstable();
    assert_eq!(sequences, vec![1, 2, 3, 4, 5]);
    client.close().await;
    server.shutdown().await;
}

/// Two clients (two connections) writing one segment: `publish` reports the other's win as a typed
/// conflict, `append` retries it, and every append lands exactly once.
async fn appends_from_two_clients_retry_their_conflicts(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    // Many quick retries: two writers collide often, and no append may give up.
    let retry = RetryPolicy {
        attempts: 100,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(20),
        ..Default::default()
    };
    let connect = || {
        let options = ClientOptions::default().with_retry(retry);
        Client::connect(runtime.clone(), url(&server), static_token(token(&["streamkit::*"])), options)
    };
    let (first, second) = (connect().await.unwrap(), connect().await.unwrap());
    let store = Uuid::new_v4();
    let writers: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .enumerate()
        .map(|(writer, client)| {
            runtime.spawn(async move {
                let mut sequences = Vec::new();
                for i in 0..20 {
                    let payload = format!("w{writer}-{i}");
                    let status =
                        client.append(store, "space", "segment", payload, Metadata::new()).await.unwrap();
                    sequences.push(status.last_sequence);
                }
                sequences
            })
        })
        .collect();
    let mut sequences = Vec::new();
    for writer in writers {
        sequences.extend(step(&runtime, writer).await.unwrap());
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=40).collect::<Vec<u64>>(), "every append once, no gaps");

    // A publish at a sequence another client took in between fails with the typed conflict.
    let head = first.peek(store, "space", "segment").await.unwrap().sequence;
    let stale =
        first.produce(store, "space", "segment", futures_util::stream::iter([Record::new(head, "late")]));
    let (_, error) = collect(&runtime, stale).await;
    let error = error.expect("a stale sequence fails");
    assert_eq!(error.kind(), ErrorKind::SequenceConflict { expected: head + 1, got: head }, "{error}");
    first.close().await;
    second.close().await;
    server.shutdown().await;
}

/// A server keeping its stores in `dir`, so that a restarted server has the data.
fn embedded_config(listen: std::net::SocketAddr, dir: &std::path::Path) -> ServerConfig {
    let mut config = server_config(listen);
    config.store_factory = Some(StoreFactory::embedded(dir, Default::default()));
    config
}

async fn reconnects_after_the_server_restarts(runtime: Arc<dyn Runtime>) {
    let dir = tempfile::tempdir().unwrap();
    let config = |listen| embedded_config(listen, dir.path());
    let server = start(runtime.clone(), config("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = server.local_addr();
    // A small answer buffer keeps most of the consume in flight when the server goes away.
    let options = ClientOptions { stream_buffer: 4, ..ClientOptions::default() };
    let client =
        Client::connect(runtime.clone(), url(&server), static_token(token(&["streamkit::*"])), options)
            .await
            .unwrap();
    let store = Uuid::new_v4();
    collect_ok(&runtime, client.produce(store, "s", "g", records(1..=2000, 16))).await;
    let mut subscription =
        step(&runtime, client.subscribe_segment(store, "s", "g", SubscribeOptions::default())).await.unwrap();
    assert_eq!(step(&runtime, subscription.next()).await.unwrap().unwrap().last_sequence, 2000);
    let mut consume = client.consume_segment(
        store,
        ConsumeSegment { space: "s".into(), segment: "g".into(), ..Default::default() },
    );
    assert_eq!(step(&runtime, consume.next()).await.unwrap().unwrap().sequence, 1);

    server.shutdown().await;
    let server = start(runtime.clone(), config(addr)).await.unwrap();

    // Established streams are not resumed: they fail.
    let (entries, error) = collect(&runtime, consume).await;
    assert!(entries.len() < 1999, "the consume cannot have finished: {}", entries.len());
    let error = error.expect("an open consume fails when its connection is lost");
    eprintln!("consume ended with: {error}");
    assert!(matches!(error.kind(), ErrorKind::Connection | ErrorKind::RemoteClosed), "{error}");
    let (_, error) = collect(&runtime, subscription).await;
    let error = error.expect("the subscription fails");
    eprintln!("subscription ended with: {error}");
    assert!(matches!(error.kind(), ErrorKind::Connection | ErrorKind::RemoteClosed), "{error}");

    // The next operation redials; a new subscription starts with the current snapshot.
    assert_eq!(step(&runtime, client.peek(store, "s", "g")).await.unwrap().sequence, 2000);
    let mut subscription =
        step(&runtime, client.subscribe_segment(store, "s", "g", SubscribeOptions::default())).await.unwrap();
    assert_eq!(step(&runtime, subscription.next()).await.unwrap().unwrap().last_sequence, 2000);
    drop(subscription);
    client.close().await;
    server.shutdown().await;
}

/// `follow_segment` reads what is there, then what comes, and carries on across a server restart from
/// the last entry it handed out: every entry once, in order.
async fn a_follow_resumes_across_a_server_restart(runtime: Arc<dyn Runtime>) {
    let dir = tempfile::tempdir().unwrap();
    let config = |listen| embedded_config(listen, dir.path());
    let server = start(runtime.clone(), config("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = server.local_addr();
    let connect = || {
        Client::connect(
            runtime.clone(),
            url(&server),
            static_token(token(&["streamkit::*"])),
            ClientOptions::default(),
        )
    };
    let client = connect().await.unwrap();
    let writer = connect().await.unwrap();
    let store = Uuid::new_v4();
    collect_ok(&runtime, writer.produce(store, "s", "g", records(1..=3, 8))).await;
    let mut follow = client.follow_segment(store, "s", "g", 1);
    for expected in 2..=3 {
        assert_eq!(step(&runtime, follow.next()).await.unwrap().unwrap().sequence, expected);
    }
    collect_ok(&runtime, writer.produce(store, "s", "g", records(4..=5, 8))).await;
    for expected in 4..=5 {
        assert_eq!(step(&runtime, follow.next()).await.unwrap().unwrap().sequence, expected, "live");
    }

    server.shutdown().await;
    let server = start(runtime.clone(), config(addr)).await.unwrap();
    collect_ok(&runtime, writer.produce(store, "s", "g", records(6..=8, 8))).await;
    for expected in 6..=8 {
        let entry = step(&runtime, follow.next()).await.unwrap().unwrap();
        assert_eq!(entry.sequence, expected, "after the restart");
    }
    client.close().await;
    let error = step(&runtime, follow.next()).await.unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Closed, "{error}");
    assert!(step(&runtime, follow.next()).await.is_none(), "the follow ended with its error");
    writer.close().await;
    server.shutdown().await;
}

async fn refused_token_is_not_retried(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let dials = Arc::new(AtomicUsize::new(0));
    let counter = dials.clone();
    let tokens = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, std::io::Error>("not-a-jwt".to_owned()))
    };
    let started = Instant::now();
    let error =
        step(&runtime, Client::connect(runtime.clone(), url(&server), tokens, ClientOptions::default()))
            .await
            .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthorized);
    assert_eq!(error.to_string(), "401 unauthorized");
    assert_eq!(dials.load(Ordering::SeqCst), 1, "a 401 is permanent");
    assert!(started.elapsed() < Duration::from_secs(1));

    // With auth retries on, the token source is asked again on each dial and a fresh token wins.
    let dials = Arc::new(AtomicUsize::new(0));
    let counter = dials.clone();
    let good = token(&["streamkit::*"]);
    let tokens = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, std::io::Error>(if n == 0 { "expired".to_owned() } else { good.clone() }))
    };
    let options = ClientOptions {
        retry_auth_failures: true,
        retry: RetryPolicy { initial: Duration::from_millis(60), ..RetryPolicy::default() },
        ..ClientOptions::default()
    };
    let client =
        step(&runtime, Client::connect(runtime.clone(), url(&server), tokens, options)).await.unwrap();
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    assert_eq!(step(&runtime, client.peek(Uuid::new_v4(), "s", "g")).await.unwrap().sequence, 0);
    client.close().await;
    server.shutdown().await;
}

async fn unreachable_server_gives_up_after_the_retry_policy(runtime: Arc<dyn Runtime>) {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = ClientOptions {
        retry: RetryPolicy { attempts: 3, initial: Duration::from_millis(20), ..RetryPolicy::default() },
        ..ClientOptions::default()
    };
    let url = format!("ws://127.0.0.1:{port}");
    let error =
        step(&runtime, Client::connect(runtime.clone(), url, static_token("t"), options)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    assert!(error.is_retryable());
}

/// A consumer that does not read pauses the socket instead of overflowing the mux queue, and the
/// consume completes intact once it reads.
async fn slow_consumer_pauses_the_socket(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let mut options = ClientOptions { stream_buffer: 8, ..ClientOptions::default() };
    // Without the pause, 3000 entries would overflow a 512-message stream queue.
    options.mux.stream_queue_messages = 512;
    let client =
        Client::connect(runtime.clone(), url(&server), static_token(token(&["streamkit::*"])), options)
            .await
            .unwrap();
    let store = Uuid::new_v4();
    collect_ok(&runtime, client.produce(store, "s", "g", records(1..=3000, 64))).await;
    let request = ConsumeSegment { space: "s".into(), segment: "g".into(), ..Default::default() };
    let mut consume = client.consume_segment(store, request);
    assert_eq!(step(&runtime, consume.next()).await.unwrap().unwrap().sequence, 1);
    runtime.sleep(Duration::from_millis(300)).await;
    let mut expected = 2;
    step(&runtime, async {
        while let Some(entry) = consume.next().await {
            assert_eq!(entry.unwrap().sequence, expected);
            expected += 1;
        }
    })
    .await;
    assert_eq!(expected, 3001);
    client.close().await;
    server.shutdown().await;
}

/// A consumer that stalls the socket longer than the stall timeout is aborted; the connection and
/// its other operations go on.
async fn stalled_consumer_is_aborted_after_the_stall_timeout(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let mut options = ClientOptions {
        stream_buffer: 8,
        stall_timeout: Duration::from_millis(200),
        ..ClientOptions::default()
    };
    options.mux.stream_queue_messages = 512;
    let client =
        Client::connect(runtime.clone(), url(&server), static_token(token(&["streamkit::*"])), options)
            .await
            .unwrap();
    let store = Uuid::new_v4();
    collect_ok(&runtime, client.produce(store, "s", "g", records(1..=3000, 64))).await;
    let request = ConsumeSegment { space: "s".into(), segment: "g".into(), ..Default::default() };
    let mut consume = client.consume_segment(store, request);
    assert_eq!(step(&runtime, consume.next()).await.unwrap().unwrap().sequence, 1);
    runtime.sleep(Duration::from_millis(800)).await;
    let (entries, error) = collect(&runtime, consume).await;
    assert!(entries.len() < 2999);
    let error = error.expect("the stalled consume is aborted");
    assert_eq!(
        (error.kind(), error.to_string().as_str()),
        (ErrorKind::Overloaded, "stream receive buffer overloaded")
    );
    assert_eq!(step(&runtime, client.peek(store, "s", "g")).await.unwrap().sequence, 3000);
    client.close().await;
    server.shutdown().await;
}

/// Concurrent consumes on one connection get every entry in order (frames arrive in bursts larger than
/// what the driver handles per wake-up).
async fn concurrent_consumes_are_complete(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    let store = Uuid::new_v4();
    for segment in 0..8 {
        collect_ok(&runtime, client.produce(store, "s", format!("g{segment}"), records(1..=2000, 32))).await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|segment| {
            let client = client.clone();
            runtime.spawn(async move {
                let request = ConsumeSegment {
                    space: "s".into(),
                    segment: format!("g{segment}"),
                    ..Default::default()
                };
                let mut entries = client.consume_segment(store, request);
                let mut expected = 1;
                while let Some(entry) = entries.next().await {
                    assert_eq!(entry.unwrap().sequence, expected);
                    expected += 1;
                }
                expected - 1
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(step(&runtime, task).await.unwrap(), 2000);
    }
    client.close().await;
    server.shutdown().await;
}

async fn subscription_heartbeats_are_filtered_and_keep_it_alive(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    let store = Uuid::new_v4();
    let options = SubscribeOptions { heartbeat_interval: Some(Duration::from_millis(300)) };
    let mut subscription = step(&runtime, client.subscribe_space(store, "s", options)).await.unwrap();
    // Three idle intervals (1 s each after rounding up) pass on heartbeats alone.
    let idle = runtime.timeout(Duration::from_millis(3500), subscription.next()).await;
    assert!(idle.is_err(), "heartbeats are not delivered and the subscription stays open: {idle:?}");
    collect_ok(&runtime, client.produce(store, "s", "g", records(1..=2, 8))).await;
    let status = step(&runtime, subscription.next()).await.unwrap().unwrap();
    assert_eq!((status.segment.as_str(), status.last_sequence, status.heartbeat), ("g", 2, false));
    client.close().await;
    let (_, error) = collect(&runtime, subscription).await;
    assert_eq!(error.unwrap().kind(), ErrorKind::Closed);
    server.shutdown().await;
}

per_runtime!(
    tokio: [
        access_denied_outside_the_token_scope,
        concurrent_publishes_get_increasing_sequences,
        appends_from_two_clients_retry_their_conflicts,
        reconnects_after_the_server_restarts,
        a_follow_resumes_across_a_server_restart,
        refused_token_is_not_retried,
        unreachable_server_gives_up_after_the_retry_policy,
        slow_consumer_pauses_the_socket,
        stalled_consumer_is_aborted_after_the_stall_timeout,
        concurrent_consumes_are_complete,
        subscription_heartbeats_are_filtered_and_keep_it_alive,
        hooks_and_health_check_reconnect_in_the_background,
        a_space_follow_resumes_across_a_server_restart,
    ],
    smol: [hooks_and_health_check_reconnect_in_the_background, a_space_follow_resumes_across_a_server_restart, reconnects_after_the_server_restarts, a_follow_resumes_across_a_server_restart, concurrent_publishes_get_increasing_sequences, concurrent_consumes_are_complete],
    async_std: [reconnects_after_the_server_restarts],
);

/// The connection hooks and the health check (Go's reconnect listener, dial-failure callback and
/// health check): a restart of the server is noticed and repaired in the background, before any
/// operation asks, and every failed dial meanwhile reaches the callback.
async fn hooks_and_health_check_reconnect_in_the_background(runtime: Arc<dyn Runtime>) {
    let dir = tempfile::tempdir().unwrap();
    let server =
        start(runtime.clone(), embedded_config("127.0.0.1:0".parse().unwrap(), dir.path())).await.unwrap();
    let addr = server.local_addr();
    let (reconnects, dial_failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = Client::builder()
        .runtime(runtime.clone())
        .token(token(&["streamkit::*"]))
        .health_check(Duration::from_millis(100))
        .on_reconnect({
            let reconnects = reconnects.clone();
            move || {
                reconnects.fetch_add(1, Ordering::AcqRel);
            }
        })
        .on_dial_failure({
            let dial_failures = dial_failures.clone();
            move |error| {
                // A refused TCP connection is a transient connection error, not a refusal of the token.
                if error.kind() == ErrorKind::Connection {
                    dial_failures.fetch_add(1, Ordering::AcqRel);
                }
            }
        })
        .connect(url(&server))
        .await
        .unwrap();
    let store = Uuid::new_v4();
    step(&runtime, client.append(store, "s", "g", "before", Default::default())).await.unwrap();
    assert_eq!(reconnects.load(Ordering::Acquire), 0, "the first connection is not a reconnect");

    // Down: the health check dials and fails, and says so.
    server.shutdown().await;
    step(&runtime, async {
        while dial_failures.load(Ordering::Acquire) == 0 {
            runtime.sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Up again: the health check reconnects without any operation asking.
    let server = start(runtime.clone(), embedded_config(addr, dir.path())).await.unwrap();
    step(&runtime, async {
        while reconnects.load(Ordering::Acquire) == 0 {
            runtime.sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    step(&runtime, async {
        while server.connection_count() == 0 {
            runtime.sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(step(&runtime, client.peek(store, "s", "g")).await.unwrap().sequence, 1);
    assert_eq!(reconnects.load(Ordering::Acquire), 1);
    client.close().await;
    server.shutdown().await;
}

/// `follow_space` hands out every entry of every segment of a space once, in timestamp order, live and
/// across a server restart.
async fn a_space_follow_resumes_across_a_server_restart(runtime: Arc<dyn Runtime>) {
    let dir = tempfile::tempdir().unwrap();
    let config = |listen| embedded_config(listen, dir.path());
    let server = start(runtime.clone(), config("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = server.local_addr();
    let connect = || {
        Client::connect(
            runtime.clone(),
            url(&server),
            static_token(token(&["streamkit::*"])),
            ClientOptions::default(),
        )
    };
    let (client, writer) = (connect().await.unwrap(), connect().await.unwrap());
    let store = Uuid::new_v4();
    let write = |segment: &'static str, payload: &'static str| {
        writer.append(store, "s", segment, payload, Default::default())
    };
    step(&runtime, write("a", "1")).await.unwrap();
    step(&runtime, write("b", "2")).await.unwrap();
    let mut follow = client.follow_space(store, streamkit::ConsumeSpace::new("s"));
    let mut seen = Vec::new();
    let mut next = async || {
        let entry = step(&runtime, follow.next()).await.unwrap().unwrap();
        String::from_utf8(entry.payload.unwrap_or_default().to_vec()).unwrap()
    };
    for _ in 0..2 {
        seen.push(next().await);
    }
    step(&runtime, write("a", "3")).await.unwrap();
    seen.push(next().await);

    server.shutdown().await;
    let server = start(runtime.clone(), config(addr)).await.unwrap();
    // Entries of one millisecond are in segment order: write in that order too.
    step(&runtime, write("b", "4")).await.unwrap();
    step(&runtime, write("c", "5")).await.unwrap();
    for _ in 0..2 {
        seen.push(next().await);
    }
    assert_eq!(seen, ["1", "2", "3", "4", "5"], "each entry once, in timestamp order");
    client.close().await;
    writer.close().await;
    server.shutdown().await;
}
