//! Mounting the server on an axum application: `/streamz` (and the probes) on the application's own
//! port, next to its routes, with the application's middleware around them. Then a client appends and
//! reads back through that port.
//!
//! `cargo run -p streamkit --example axum_embed --features axum`

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use futures_util::TryStreamExt;
use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::server::{ServerConfig, start_embedded};
use streamkit::{ConsumeSegment, Uuid};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = streamkit::runtime::default_runtime().ok_or("no async runtime")?;
    let secret = Uuid::new_v4().to_string();
    let config = ServerConfig::memory("127.0.0.1:0".parse()?, JwtVerifier::hs256(secret.as_bytes())?);
    let streamkit = start_embedded(runtime, config).await?;

    let app: Router = Router::new()
        .route("/", get(|| async { "the application's own page\n" }))
        .merge(streamkit::http::axum::router_with_probes(streamkit.front().clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    println!("application on http://{addr}, streamkit on ws://{addr}/streamz");

    let token = TokenSigner::hs256(secret.as_bytes())?
        .sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60)))?;
    let client = streamkit::connect(format!("ws://{addr}"), token).await?;
    let orders = client.store(Uuid::new_v4());
    orders.append("orders", "order-42", "created", Default::default()).await?;
    orders.append("orders", "order-42", "paid", Default::default()).await?;
    let entries: Vec<_> =
        orders.consume_segment(ConsumeSegment::new("orders", "order-42")).try_collect().await?;
    for entry in &entries {
        println!(
            "{} {}",
            entry.sequence,
            String::from_utf8_lossy(entry.payload.as_deref().unwrap_or_default())
        );
    }

    client.close().await;
    streamkit.shutdown().await;
    serving.abort();
    Ok(())
}
