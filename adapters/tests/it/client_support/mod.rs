//! Shared harness of the client suites: a real server (memory store) on loopback, a client over JSON,
//! CBOR or the in-process transport, on tokio, smol or async-std.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::client::{Client, ClientOptions, Error, ItemStream, static_token};
use streamkit::core::wire::Codec;
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit::server::{RunningServer, ServerConfig, start};
use streamkit::store::StoreFactory;

pub const SECRET: &[u8] = b"top-secret";
/// Bounds every wait of a test so that a hang fails instead of stalling the suite.
pub const STEP: Duration = Duration::from_secs(10);

/// How the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Json,
    Cbor,
    InProcess,
}

pub fn token(scopes: &[&str]) -> String {
    TokenSigner::hs256(SECRET)
        .unwrap()
        .sign(&TokenClaims::new(scopes.iter().copied(), Duration::from_secs(300)))
        .unwrap()
}

pub fn server_config(listen: SocketAddr) -> ServerConfig {
    ServerConfig::new(listen, JwtVerifier::hs256(SECRET).unwrap(), StoreFactory::memory())
}

pub async fn start_server(runtime: &Arc<dyn Runtime>) -> RunningServer {
    start(runtime.clone(), server_config("127.0.0.1:0".parse().unwrap())).await.unwrap()
}

pub fn url(server: &RunningServer) -> String {
    format!("ws://{}", server.local_addr())
}

pub async fn client(runtime: &Arc<dyn Runtime>, server: &RunningServer, via: Via) -> Client {
    let codec = if via == Via::Cbor { Codec::Cbor } else { Codec::Json };
    match via {
        Via::InProcess => Client::in_process(runtime.clone(), server.engine()).await.unwrap(),
        Via::Json | Via::Cbor => Client::connect(
            runtime.clone(),
            url(server),
            static_token(token(&["streamkit::*"])),
            ClientOptions::default().with_codec(codec),
        )
        .await
        .unwrap(),
    }
}

/// Awaits `future` for at most [`STEP`].
pub async fn step<F: Future>(runtime: &Arc<dyn Runtime>, future: F) -> F::Output {
    runtime.timeout(STEP, future).await.expect("step timed out")
}

/// Collects a stream to its end; the error, if it ended with one.
pub async fn collect<T>(runtime: &Arc<dyn Runtime>, mut stream: ItemStream<T>) -> (Vec<T>, Option<Error>) {
    step(runtime, async {
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => items.push(item),
                Err(error) => return (items, Some(error)),
            }
        }
        (items, None)
    })
    .await
}

/// Collects a stream that must end cleanly.
pub async fn collect_ok<T>(runtime: &Arc<dyn Runtime>, stream: ItemStream<T>) -> Vec<T> {
    let (items, error) = collect(runtime, stream).await;
    assert!(error.is_none(), "stream failed: {error:?}");
    items
}
