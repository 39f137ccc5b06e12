//! Callback-style subscriptions: handlers on their own tasks with a timeout and panic isolation, a
//! registry with each subscription's state and counts, and resubscription after a server restart.
#![cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_channel::mpsc;
use futures_util::StreamExt;
use streamkit::client::{Client, HandlerOptions, SubscriptionInfo, SubscriptionState};
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit::server::start;
use streamkit::store::StoreFactory;
use uuid::Uuid;

use crate::client_support::{Via, client, server_config, start_server, step};

/// Waits until the registry entry of the client's first subscription satisfies `ready`.
async fn until_info(runtime: &Arc<dyn Runtime>, client: &Client, ready: impl Fn(&SubscriptionInfo) -> bool) {
    step(runtime, async {
        while !client.subscriptions().first().is_some_and(&ready) {
            runtime.sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn a_stuck_or_panicking_handler_stalls_nothing(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    let store = Uuid::new_v4();
    let (delivered, mut delivered_rx) = mpsc::unbounded();
    let options =
        HandlerOptions { concurrency: 2, timeout: Duration::from_millis(300), ..HandlerOptions::default() };
    let handler_runtime = runtime.clone();
    let id = client.subscribe_space_with(store, "orders", options, move |status| {
        let (delivered, runtime) = (delivered.clone(), handler_runtime.clone());
        async move {
            match status.segment.as_str() {
                // Never answers: cancelled at the timeout.
                "stuck" => runtime.sleep(Duration::from_secs(3600)).await,
                "panics" => panic!("a handler bug"),
                _ => {}
            }
            delivered.unbounded_send((status.segment, status.last_sequence)).map_err(|e| e.to_string())
        }
    });
    until_info(&runtime, &client, |info| info.state == SubscriptionState::Active).await;

    for segment in ["stuck", "panics", "fine"] {
        step(&runtime, client.append(store, "orders", segment, "x", Default::default())).await.unwrap();
    }
    // The stuck and the panicking handlers hold up neither the other segment nor the connection.
    assert_eq!(step(&runtime, delivered_rx.next()).await, Some(("fine".to_owned(), 1)));
    assert_eq!(step(&runtime, client.peek(store, "orders", "stuck")).await.unwrap().sequence, 1);
    until_info(&runtime, &client, |info| info.errors >= 2).await;
    let info = &client.subscriptions()[0];
    assert_eq!((info.id, info.store, info.space.as_str(), info.segment.as_str()), (id, store, "orders", "*"));
    assert_eq!(info.state, SubscriptionState::Active);
    assert_eq!(info.deliveries, 1);
    assert!(info.last_delivery.is_some());
    let errors = info.last_error.clone().unwrap_or_default();
    assert!(errors.contains("timed out") || errors.contains("panicked"), "{errors}");

    // It goes on after the failures: the next status of `fine` arrives too.
    step(&runtime, client.append(store, "orders", "fine", "y", Default::default())).await.unwrap();
    assert_eq!(step(&runtime, delivered_rx.next()).await, Some(("fine".to_owned(), 2)));

    assert!(client.unsubscribe(id));
    assert!(!client.unsubscribe(id));
    assert!(client.subscriptions().is_empty());
    client.close().await;
    server.shutdown().await;
}

async fn a_handler_subscription_survives_a_server_restart(runtime: Arc<dyn Runtime>) {
    let dir = tempfile::tempdir().unwrap();
    let config = |listen| {
        let mut config = server_config(listen);
        config.store_factory = Some(StoreFactory::embedded(dir.path(), Default::default()));
        config
    };
    let server = start(runtime.clone(), config("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = server.local_addr();
    let client = client(&runtime, &server, Via::Json).await;
    let store = Uuid::new_v4();
    let last_seen = Arc::new(AtomicU64::new(0));
    let seen = last_seen.clone();
    client.subscribe_segment_with(store, "s", "g", HandlerOptions::default(), move |status| {
        seen.store(status.last_sequence, Ordering::Release);
        async { Ok::<(), String>(()) }
    });
    until_info(&runtime, &client, |info| info.state == SubscriptionState::Active).await;
    step(&runtime, client.append(store, "s", "g", "1", Default::default())).await.unwrap();
    step(&runtime, async {
        while last_seen.load(Ordering::Acquire) < 1 {
            runtime.sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    server.shutdown().await;
    let server = start(runtime.clone(), config(addr)).await.unwrap();
    // Subscribed again (the connection was redialed); the next commit reaches the handler.
    until_info(&runtime, &client, |info| info.state == SubscriptionState::Active && info.errors >= 1).await;
    step(&runtime, client.append(store, "s", "g", "2", Default::default())).await.unwrap();
    step(&runtime, async {
        while last_seen.load(Ordering::Acquire) < 2 {
            runtime.sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    client.close().await;
    server.shutdown().await;
}

/// A client dropped everywhere takes its subscriptions (and so its connection) with it.
async fn dropping_the_client_stops_its_subscriptions(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    client.subscribe_space_with(Uuid::new_v4(), "s", HandlerOptions::default(), |_| async {
        Ok::<(), String>(())
    });
    until_info(&runtime, &client, |info| info.state == SubscriptionState::Active).await;
    assert_eq!(server.connection_count(), 1);
    drop(client);
    step(&runtime, async {
        while server.connection_count() > 0 {
            runtime.sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.shutdown().await;
}

per_runtime!(
    tokio: [
        a_stuck_or_panicking_handler_stalls_nothing,
        a_handler_subscription_survives_a_server_restart,
        dropping_the_client_stops_its_subscriptions,
    ],
    smol: [
        a_stuck_or_panicking_handler_stalls_nothing,
        a_handler_subscription_survives_a_server_restart,
        dropping_the_client_stops_its_subscriptions,
    ],
    async_std: [],
);
