//! Authorization after the handshake: the token's store scopes are enforced on every frame (a store
//! outside them is never opened), and a connection does not outlive its token.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::server::ServerConfig;
use streamkit::store::{RedbOptions, StoreFactory};
use streamkit_proto::api::{GetSpaces, Request, SubscribeToSegmentStatus};
use streamkit_proto::client::ClientItem;
use streamkit_proto::stream::StreamEnd;
use streamkit_proto::wire::Codec;
use support::*;
use uuid::Uuid;

fn tokio_runtime() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime::try_current().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_scoped_token_cannot_touch_another_store() {
    let runtime = tokio_runtime();
    let dir = tempfile::tempdir().unwrap();
    let factory = StoreFactory::embedded(dir.path(), RedbOptions::default());
    let mine = Uuid::new_v4();
    let other = Uuid::new_v4();
    let server = serve(&runtime, ServerConfig::new(any_port(), verifier(), factory)).await;
    let token = token_for([format!("streamkit::{mine}")], Duration::from_secs(60));
    for codec in CODECS {
        let client = TestClient::connect(&runtime, &url(&server), &token, codec).await.unwrap();
        let segment = format!("sg-{codec:?}");
        client.produce(mine, "sp", &segment, records(1, 3)).await.ok();
        let denied = client.call(other, Request::GetSpaces(GetSpaces {})).await;
        assert_eq!(denied.end, Err("remote error: access denied".to_owned()), "{codec:?}");
        assert!(denied.messages.is_empty());
        let produce = client.produce(other, "sp", "sg", records(1, 3)).await;
        assert_eq!(produce.end, Err("remote error: access denied".to_owned()));
        // The connection is still fine for the store the token names.
        let spaces = client.call(mine, Request::GetSpaces(GetSpaces {})).await.ok();
        assert_eq!(spaces.names(), ["sp"]);
        client.produce(mine, "sp", &segment, records(4, 6)).await.ok();
        client.close().await;
    }
    assert!(dir.path().join(mine.to_string()).is_dir());
    assert!(!dir.path().join(other.to_string()).exists(), "the other store was never opened");
    let text = server.metrics().render();
    // Per codec: the request frame of the GetSpaces, and the request, records and end of the produce.
    assert!(metric(&text, "streamkit_errors_total{kind=\"access_denied\"}").unwrap() >= 4.0, "{text}");
    assert_eq!(metric(&text, "streamkit_stores_open"), Some(1.0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_token_expires() {
    let runtime = tokio_runtime();
    let mut config = memory_config();
    // No leeway: the token is refused, and the connection closed, exactly at `exp`.
    config.authenticator = Arc::new(verifier().with_leeway(Duration::ZERO));
    let server = serve(&runtime, config).await;
    let store = Uuid::new_v4();
    let token = token_for(["streamkit::*"], Duration::from_secs(2));
    let client = TestClient::connect(&runtime, &url(&server), &token, Codec::Json).await.unwrap();
    let connected = Instant::now();
    let subscription = client
        .open(
            store,
            Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
                space: "sp".into(),
                segment: "*".into(),
                heartbeat_interval_seconds: 0,
            }),
        )
        .await;
    client.produce(store, "sp", "sg", records(1, 1)).await.ok();
    assert!(matches!(subscription.next().await, Some(ClientItem::Message(_))), "the live status");
    // The subscription would run forever; the expiry ends it and the connection.
    let end = within(&runtime, "subscription end", subscription.next()).await;
    assert!(matches!(end, Some(ClientItem::End(StreamEnd::Failed(_)))), "{end:?}");
    assert_eq!(client.closed().await, "muxer closed", "the server sent its close frame");
    assert!(connected.elapsed() < Duration::from_secs(5), "closed at expiry, not by a heartbeat");
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_errors_total{kind=\"token_expired\"}"), Some(1.0));
    assert_eq!(
        metric(&text, "streamkit_operations_total{op=\"subscribe_segment_status\",outcome=\"cancelled\"}"),
        Some(1.0)
    );
    server.shutdown().await;
}
