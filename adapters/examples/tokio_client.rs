//! The streamkit client on tokio: produce, consume and subscribe.
//!
//! `cargo run --example tokio_client` starts a server in this process (memory store) and talks to it
//! over the in-process transport. With `STREAMKIT_URL` (and `STREAMKIT_TOKEN`) set it connects to that
//! server over a WebSocket instead.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use streamkit::auth::JwtVerifier;
use streamkit::client::{Client, ClientOptions, SubscribeOptions, static_token};
use streamkit::core::api::{ConsumeSegment, Metadata, Record};
use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::server::{ServerConfig, start};
use streamkit::store::StoreFactory;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().ok_or("not in a tokio runtime")?);
    let mut server = None;
    let client = match std::env::var("STREAMKIT_URL") {
        Ok(url) => {
            let token = std::env::var("STREAMKIT_TOKEN")?;
            Client::connect(runtime.clone(), url, static_token(token), ClientOptions::default()).await?
        }
        Err(_) => {
            // Nobody can dial this server without the (random) secret; the example uses it in-process.
            let secret = uuid::Uuid::new_v4().to_string();
            let config = ServerConfig::new(
                "127.0.0.1:0".parse()?,
                JwtVerifier::hs256(secret.as_bytes())?,
                StoreFactory::memory(),
            );
            let running = start(runtime.clone(), config).await?;
            let client = Client::in_process(runtime.clone(), running.engine()).await?;
            server = Some(running);
            client
        }
    };
    let store = uuid::Uuid::new_v4();

    // Subscribe first, so the updates of what follows arrive live.
    let mut statuses = client.subscribe_space(store, "orders", SubscribeOptions::default()).await?;

    // Produce three records (each must carry the segment's next sequence).
    let records =
        futures_util::stream::iter((1..=3).map(|seq| Record::new(seq, format!("order event {seq}"))));
    let mut acks = client.produce(store, "orders", "order-42", records);
    while let Some(status) = acks.next().await {
        println!("committed up to sequence {}", status?.last_sequence);
    }
    // Or one at a time, at whatever the next sequence is.
    let status =
        client.publish(store, "orders", "order-42", b"order shipped".to_vec(), Metadata::new()).await?;
    println!("published sequence {}", status.last_sequence);

    let request = ConsumeSegment { space: "orders".into(), segment: "order-42".into(), ..Default::default() };
    let mut entries = client.consume_segment(store, request);
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        println!(
            "{}: {}",
            entry.sequence,
            String::from_utf8_lossy(entry.payload.as_deref().unwrap_or_default())
        );
    }

    while let Ok(Some(status)) = tokio::time::timeout(Duration::from_secs(1), statuses.next()).await {
        let status = status?;
        println!("subscription: {}/{} at {}", status.space, status.segment, status.last_sequence);
        if status.last_sequence == 4 {
            break;
        }
    }
    client.close().await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
}
