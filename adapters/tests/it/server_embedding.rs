//! A server without a listener of its own (`start_embedded`), served by an application's HTTP stack:
//! through the raw entry (the application reads the request and writes the 101 itself) on every
//! runtime, and mounted on an axum router next to the application's routes.
#![cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]

use std::sync::Arc;

use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
use streamkit::client::{Client, ClientOptions};
use streamkit::core::api::ConsumeSegment;
use streamkit::http::HttpFront;
use streamkit::runtime::{BoxedStream, Runtime, RuntimeExt};
use streamkit::server::{EmbeddedServer, start_embedded};
use streamkit::{Codec, Uuid};

use crate::client_support::{server_config, step, token};

/// Reads a request head (up to the empty line) byte by byte: the smallest HTTP server that works.
async fn read_head(stream: &mut BoxedStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    head
}

/// One connection of the application: its own `/hello`, and `/streamz` through the raw entry.
async fn serve_application_connection(front: HttpFront, mut stream: BoxedStream, peer: std::net::SocketAddr) {
    let head = read_head(&mut stream).await;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(&head), Ok(httparse::Status::Complete(_))) {
        return;
    }
    if request.path != Some("/streamz") {
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
        return;
    }
    let headers = request.headers.iter().map(|header| (header.name, header.value));
    match front.accept_upgrade(peer, headers) {
        Ok(accepted) => {
            let mut answer = String::from("HTTP/1.1 101 Switching Protocols\r\n");
            for (name, value) in accepted.response_headers() {
                answer.push_str(&format!("{name}: {value}\r\n"));
            }
            answer.push_str("\r\n");
            if stream.write_all(answer.as_bytes()).await.is_ok() {
                front.serve_upgraded(accepted, stream).await;
            }
        }
        Err(rejection) => {
            let answer = rejection.answer();
            let text = format!(
                "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                answer.status,
                answer.reason,
                answer.body.len(),
                answer.body
            );
            let _ = stream.write_all(text.as_bytes()).await;
        }
    }
}

/// Sends `request` on a fresh connection and returns everything the server answered.
async fn raw_exchange(runtime: &Arc<dyn Runtime>, addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = runtime.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = step(runtime, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn upgrade_request(token: &str) -> String {
    format!(
        "GET /streamz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
}

/// Appends and reads back through a client of `url`, with `codec`.
async fn round_trip(runtime: &Arc<dyn Runtime>, url: String, codec: Codec) {
    let options = ClientOptions::default().with_codec(codec);
    let client = step(runtime, Client::connect(runtime.clone(), url, token(&["streamkit::*"]), options))
        .await
        .unwrap();
    let store = Uuid::new_v4();
    for event in ["created", "paid"] {
        step(runtime, client.append(store, "orders", "order-1", event, Default::default())).await.unwrap();
    }
    let mut entries = client.consume_segment(store, ConsumeSegment::new("orders", "order-1"));
    let mut sequences = Vec::new();
    while let Some(entry) = step(runtime, entries.next()).await {
        sequences.push(entry.unwrap().sequence);
    }
    assert_eq!(sequences, [1, 2]);
    client.close().await;
}

/// What every way of embedding must do at `addr`: serve clients of both codecs, answer a refused
/// token with 401 before any upgrade, and refuse upgrades with 503 once the server is shut down.
async fn check_the_endpoint(runtime: &Arc<dyn Runtime>, addr: std::net::SocketAddr, server: EmbeddedServer) {
    round_trip(runtime, format!("ws://{addr}"), Codec::Json).await;
    round_trip(runtime, format!("ws://{addr}"), Codec::Cbor).await;
    let refused = raw_exchange(runtime, addr, &upgrade_request("not-a-token")).await;
    assert!(refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{refused}");
    assert!(refused.ends_with("Unauthorized\n"), "{refused}");
    server.shutdown().await;
    let after = raw_exchange(runtime, addr, &upgrade_request(&token(&["streamkit::*"]))).await;
    assert!(after.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{after}");
}

async fn raw_entry_serves_an_application_upgraded_connection(runtime: Arc<dyn Runtime>) {
    let server =
        start_embedded(runtime.clone(), server_config("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let listener = runtime.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let front = server.front().clone();
    let accept = {
        let runtime = runtime.clone();
        runtime.clone().spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                runtime.spawn(serve_application_connection(front.clone(), stream, peer)).detach();
            }
        })
    };

    assert!(raw_exchange(&runtime, addr, "GET /hello HTTP/1.1\r\n\r\n").await.ends_with("hello"));
    check_the_endpoint(&runtime, addr, server).await;
    drop(accept);
}

per_runtime!(raw_entry_serves_an_application_upgraded_connection);

#[cfg(feature = "axum")]
mod on_axum {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::get;
    use streamkit::runtime::{Runtime, TokioRuntime};
    use streamkit::server::start_embedded;

    use super::{check_the_endpoint, raw_exchange};
    use crate::client_support::server_config;

    #[test]
    fn the_server_mounts_on_an_axum_router_next_to_the_application_routes() {
        let tokio =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        tokio.block_on(async {
            let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
            let server =
                start_embedded(runtime.clone(), server_config("127.0.0.1:0".parse().unwrap())).await.unwrap();
            let app: Router = Router::new()
                .route("/hello", get(|| async { "hello" }))
                .merge(streamkit::http::axum::router_with_probes(server.front().clone()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let serving = tokio::spawn(async move {
                axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
            });

            let hello =
                raw_exchange(&runtime, addr, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
            assert!(hello.starts_with("HTTP/1.1 200 OK\r\n") && hello.ends_with("hello"), "{hello}");
            let ready =
                raw_exchange(&runtime, addr, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
            assert!(ready.ends_with("ready"), "{ready}");
            let metrics =
                raw_exchange(&runtime, addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
            assert!(metrics.contains("streamkit_"), "{metrics}");
            check_the_endpoint(&runtime, addr, server).await;
            serving.abort();
        });
    }
}
