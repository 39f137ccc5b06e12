//! `with_lease` and `with_lease_cooperative` when the lease is lost: the server goes away, renewals
//! fail for a whole TTL (so the server would have let the lease expire), and the work is dropped or
//! told, on each runtime.
#![cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]

use std::sync::Arc;
use std::time::Duration;

use futures_channel::oneshot;
use streamkit::client::ErrorKind;
use streamkit::runtime::Runtime;
use uuid::Uuid;

use crate::client_support::{Via, client, start_server, step};

/// Renewals every second; a loss is declared once none succeeded for a second.
const TTL: Duration = Duration::from_secs(1);

async fn cooperative_work_is_told_and_returns_its_own_error(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    let (started_tx, started_rx) = oneshot::channel();
    let leased = client.with_lease_cooperative(Uuid::new_v4(), "job", TTL, |lease| async move {
        let _ = started_tx.send(());
        assert!(!lease.is_lost());
        lease.lost().await;
        assert!(lease.is_lost());
        Err::<(), _>("stopped: lease lost")
    });
    let stop_server = async {
        started_rx.await.unwrap();
        server.shutdown().await;
    };
    let (outcome, ()) = step(&runtime, futures_util::future::join(leased, stop_server)).await;
    assert_eq!(outcome.unwrap(), Err("stopped: lease lost"));
}

async fn dropped_work_fails_with_lease_lost(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    let (started_tx, started_rx) = oneshot::channel();
    let leased = client.with_lease(Uuid::new_v4(), "job", TTL, |_lease| async move {
        let _ = started_tx.send(());
        // Never ends by itself: only the loss of the lease ends this call.
        std::future::pending::<()>().await
    });
    let stop_server = async {
        started_rx.await.unwrap();
        server.shutdown().await;
    };
    let (outcome, ()) = step(&runtime, futures_util::future::join(leased, stop_server)).await;
    let error = outcome.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::LeaseLost);
    assert_eq!(error.to_string(), "lease lost");
}

async fn a_released_lease_reads_as_lost_to_clones_of_it(runtime: Arc<dyn Runtime>) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, Via::Json).await;
    let kept = step(
        &runtime,
        client.with_lease_cooperative(Uuid::new_v4(), "job", TTL, |lease| async move { lease }),
    )
    .await
    .unwrap();
    assert!(kept.is_lost());
    step(&runtime, kept.lost()).await;
    server.shutdown().await;
}

per_runtime!(
    cooperative_work_is_told_and_returns_its_own_error,
    dropped_work_fails_with_lease_lost,
    a_released_lease_reads_as_lost_to_clones_of_it
);
