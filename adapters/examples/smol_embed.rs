//! Embedding the server in an application that runs on smol and serves HTTP itself: no tokio anywhere
//! in this program's dependency tree (the test `feature_sets` checks it with `cargo tree`).
//!
//! The application accepts its own connections and reads each request. `/streamz` goes to the
//! server's front: `accept_upgrade` checks the token and the WebSocket headers, the application writes
//! the `101` (or the refusal's answer), and `serve_upgraded` runs the WebSocket. Every other path is
//! the application's. Then a client appends and reads back through the application's port.
//!
//! `cargo run -p streamkit --example smol_embed --no-default-features --features smol,client,server`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{AsyncReadExt, AsyncWriteExt, TryStreamExt};
use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::http::HttpFront;
use streamkit::runtime::{BoxedStream, Runtime, RuntimeExt, SmolRuntime};
use streamkit::server::{ServerConfig, start_embedded};
use streamkit::{Client, ConsumeSegment, Uuid};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let runtime: Arc<dyn Runtime> = Arc::new(SmolRuntime::new());
    let secret = Uuid::new_v4().to_string();
    let config = ServerConfig::memory("127.0.0.1:0".parse()?, JwtVerifier::hs256(secret.as_bytes())?);
    let streamkit = start_embedded(runtime.clone(), config).await?;

    // The application's listener and its request loop.
    let listener = runtime.bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let front = streamkit.front().clone();
    let accepting = runtime.spawn({
        let runtime = runtime.clone();
        async move {
            while let Ok((stream, peer)) = listener.accept().await {
                runtime.spawn(serve(front.clone(), stream, peer)).detach();
            }
        }
    });
    println!("application on http://{addr}, streamkit on ws://{addr}/streamz");

    // A client of the embedded server, through the application's port.
    let token = TokenSigner::hs256(secret.as_bytes())?
        .sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60)))?;
    let client =
        Client::builder().runtime(runtime.clone()).token(token).connect(format!("ws://{addr}")).await?;
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
    drop(accepting);
    Ok(())
}

/// One connection: `/streamz` is upgraded for the server, anything else is the application's.
async fn serve(front: HttpFront, mut stream: BoxedStream, peer: SocketAddr) {
    let Some(head) = read_head(&mut stream).await else { return };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(&head), Ok(httparse::Status::Complete(_))) {
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    if request.path != Some("/streamz") {
        let body = "the application's own page\n";
        let answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let _ = stream.write_all(answer.as_bytes()).await;
        return;
    }
    let request_headers = request.headers.iter().map(|header| (header.name, header.value));
    match front.accept_upgrade(peer, request_headers) {
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
            let mut text = format!("HTTP/1.1 {} {}\r\n", answer.status, answer.reason);
            for (name, value) in &answer.headers {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                answer.body.len(),
                answer.body
            ));
            let _ = stream.write_all(text.as_bytes()).await;
        }
    }
}

/// The request head, read byte by byte up to its empty line (a real application would use its HTTP
/// library); `None` if the peer left or sent more than 16 KiB of head.
async fn read_head(stream: &mut BoxedStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}
