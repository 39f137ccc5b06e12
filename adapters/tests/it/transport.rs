//! Transport tests on real loopback sockets, run once per runtime feature (tokio, smol, async-std).
//!
//! Each case is an `async fn(Arc<dyn Runtime>)`; `per_runtime!` turns it into one `#[test]` per runtime.
#![cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use futures_channel::{mpsc, oneshot};
use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
use serde_json::json;
use streamkit::auth::{AuthError, JwtVerifier, Principal, TokenClaims, TokenSigner};
use streamkit::core::auth::{ScopeError, StoreScopes};
use streamkit::core::wire::{CBOR_SUBPROTOCOL, Codec};
use streamkit::http::{
    AcceptedWebSocket, ConnectionHandler, HttpConfig, HttpFront, Readiness, ReadinessState, Rejection,
};
use streamkit::metrics::{ErrorKind, Metrics};
use streamkit::runtime::{BoxFuture, JoinError, Runtime, RuntimeExt};
use streamkit::ws::{DialError, DialOptions, WsError, dial};

const SECRET: &[u8] = b"test-secret";
const RS_PRIVATE: &[u8] = include_bytes!("data/rs256-private.pem");
const RS_PUBLIC: &[u8] = include_bytes!("data/rs256-public.pem");
const ES_PRIVATE: &[u8] = include_bytes!("data/es256-private.pem");
const ES_PUBLIC: &[u8] = include_bytes!("data/es256-public.pem");
const STORE: &str = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b";
/// Bounds every network wait of a test so a hang fails instead of stalling the suite.
const STEP: Duration = Duration::from_secs(5);

per_runtime!(
    runtime_tasks_timers_and_blocking,
    hs256_handshake_accepted,
    refused_tokens_get_401,
    rs256_and_es256_with_pinned_algorithm,
    probes_readiness_metrics_and_404,
    cbor_negotiated_json_by_default,
    batches_arrive_complete_and_in_order,
    a_batch_is_written_with_one_write,
    frames_sent_with_the_upgrade_are_kept,
    pings_answered_close_benign_and_size_capped,
    malformed_and_slow_requests_are_bounded,
);

#[cfg(feature = "tls")]
mod tls_cases {
    use super::*;

    per_runtime!(wss_dial_with_custom_roots);
}

// ---------------------------------------------------------------------------------------------
// Test server

#[derive(Debug)]
enum Event {
    Accepted { principal: Principal, codec: Codec, peer: SocketAddr },
    Ended(Result<(), String>),
}

struct EchoHandler {
    events: mpsc::UnboundedSender<Event>,
    rejections: Arc<Mutex<Vec<Rejection>>>,
    metrics: Metrics,
}

impl ConnectionHandler for EchoHandler {
    /// Echoes every message; `batch:N` answers N frames `0..N` in one batch.
    fn on_websocket(&self, accepted: AcceptedWebSocket) -> BoxFuture<'static, ()> {
        let AcceptedWebSocket { connection, principal, codec, peer, .. } = accepted;
        assert_eq!(connection.codec(), codec);
        let events = self.events.clone();
        let _ = events.unbounded_send(Event::Accepted { principal, codec, peer });
        Box::pin(async move {
            let (mut reader, mut writer) = connection.split();
            let result = async {
                while let Some(frame) = reader.recv().await? {
                    match frame.strip_prefix(b"batch:") {
                        Some(count) => {
                            let count: usize = std::str::from_utf8(count).unwrap().parse().unwrap();
                            writer.send_batch((0..count).map(|i| i.to_string().into_bytes())).await?;
                        }
                        None => writer.send_batch([frame]).await?,
                    }
                }
                Ok::<(), WsError>(())
            }
            .await;
            let _ = events.unbounded_send(Event::Ended(result.map_err(|e| e.to_string())));
        })
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    fn on_rejected(&self, _peer: SocketAddr, rejection: &Rejection) {
        self.metrics.error(match rejection {
            Rejection::Unauthorized(_) => ErrorKind::Auth,
            _ => ErrorKind::Handshake,
        });
        self.rejections.lock().unwrap().push(rejection.clone());
    }
}

struct TestServer {
    runtime: Arc<dyn Runtime>,
    addr: SocketAddr,
    url: String,
    readiness: Readiness,
    front: HttpFront,
    events: mpsc::UnboundedReceiver<Event>,
    rejections: Arc<Mutex<Vec<Rejection>>>,
    _shutdown: oneshot::Sender<()>,
}

impl TestServer {
    fn start(runtime: &Arc<dyn Runtime>, verifier: JwtVerifier) -> Self {
        let config = HttpConfig { handshake_timeout: Duration::from_millis(400), ..HttpConfig::default() };
        Self::start_with(runtime, verifier, config)
    }

    fn start_with(runtime: &Arc<dyn Runtime>, verifier: JwtVerifier, config: HttpConfig) -> Self {
        let listener = runtime.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded();
        let rejections = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(EchoHandler {
            events: events_tx,
            rejections: rejections.clone(),
            metrics: Metrics::new(),
        });
        let readiness = Readiness::new();
        readiness.set_ready();
        let front = HttpFront::new(runtime.clone(), Arc::new(verifier), handler, readiness.clone(), config);
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = front.clone();
        runtime
            .spawn(async move {
                serving
                    .serve(listener, async move {
                        let _ = stop.await;
                    })
                    .await
            })
            .detach();
        Self {
            runtime: runtime.clone(),
            addr,
            url: format!("ws://{addr}"),
            readiness,
            front,
            events,
            rejections,
            _shutdown: shutdown,
        }
    }

    async fn next_event(&mut self) -> Event {
        self.runtime
            .timeout(STEP, self.events.next())
            .await
            .expect("server event in time")
            .expect("server running")
    }

    fn last_rejection(&self) -> Option<Rejection> {
        self.rejections.lock().unwrap().last().cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256() -> TokenSigner {
    TokenSigner::hs256(SECRET).unwrap()
}

fn token(scopes: &[&str]) -> String {
    hs256().sign(&TokenClaims::new(scopes.iter().copied(), Duration::from_secs(60))).unwrap()
}

struct HttpAnswer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl HttpAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw bytes and reads the answer until the server closes the connection.
async fn http_raw(runtime: &dyn Runtime, addr: SocketAddr, request: &[u8]) -> HttpAnswer {
    let exchange = async {
        let mut stream = runtime.connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        // The connection may be reset once the answer is out; what was read is what counts.
        let _ = stream.read_to_end(&mut answer).await;
        answer
    };
    let answer = runtime.timeout(STEP, exchange).await.expect("answer in time");
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("complete head") + 4;
    let head = String::from_utf8(answer[..split].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    HttpAnswer { status, head, body: answer[split..].to_vec() }
}

async fn http_get(runtime: &dyn Runtime, addr: SocketAddr, path: &str) -> HttpAnswer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    http_raw(runtime, addr, request.as_bytes()).await
}

/// A WebSocket upgrade request with an optional Authorization value.
fn upgrade_request(addr: SocketAddr, authorization: Option<&str>) -> String {
    let mut request = format!(
        "GET /streamz HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Sends an upgrade request that must be refused with Go's 401, and returns the recorded reason.
async fn refused(server: &TestServer, authorization: Option<&str>) -> AuthError {
    let answer =
        http_raw(&*server.runtime, server.addr, upgrade_request(server.addr, authorization).as_bytes()).await;
    assert_eq!(answer.status, 401, "{authorization:?}: {}", answer.head);
    assert_eq!(answer.body, b"Unauthorized\n");
    assert_eq!(answer.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(answer.header("upgrade").is_none() && answer.header("sec-websocket-accept").is_none());
    match server.last_rejection() {
        Some(Rejection::Unauthorized(reason)) => reason,
        other => panic!("expected an auth rejection, got {other:?}"),
    }
}

/// A raw tungstenite client, to see frame types and control frames the wrapper hides.
async fn raw_client(
    runtime: &dyn Runtime,
    server: &TestServer,
    subprotocol: Option<&str>,
) -> (
    async_tungstenite::WebSocketStream<streamkit::runtime::BoxedStream>,
    async_tungstenite::tungstenite::handshake::client::Response,
) {
    let mut request = format!("{}/streamz", server.url).into_client_request().unwrap();
    let auth = HeaderValue::from_str(&format!("Bearer {}", token(&["streamkit::*"]))).unwrap();
    request.headers_mut().insert("authorization", auth);
    if let Some(protocol) = subprotocol {
        request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(protocol).unwrap());
    }
    let stream = runtime.connect(server.addr).await.unwrap();
    runtime.timeout(STEP, async_tungstenite::client_async(request, stream)).await.unwrap().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn runtime_tasks_timers_and_blocking(runtime: Arc<dyn Runtime>) {
    // Inside tokio the default is tokio; elsewhere it is one of the other compiled-in runtimes.
    let default = streamkit::runtime::default_runtime().expect("a runtime is compiled in");
    assert_eq!(
        default.name() == "tokio",
        runtime.name() == "tokio",
        "{} vs {}",
        default.name(),
        runtime.name()
    );

    assert_eq!(runtime.spawn(async { 40 + 2 }).await.unwrap(), 42);
    assert_eq!(runtime.spawn_blocking(|| "blocking".to_owned()).await.unwrap(), "blocking");
    match runtime.spawn(async { panic!("boom") }).await {
        Err(JoinError::Panicked(message)) => assert_eq!(message, "boom"),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(matches!(runtime.spawn_blocking(|| panic!("blocking boom")).await, Err(JoinError::Panicked(_))));

    // Abort stops a task that would otherwise never finish.
    let never = runtime.spawn(futures_util::future::pending::<()>());
    never.abort();
    assert!(matches!(runtime.timeout(STEP, never).await, Ok(Err(JoinError::Cancelled))));

    // A detached task keeps running.
    let (tx, rx) = oneshot::channel();
    let rt = runtime.clone();
    runtime
        .spawn(async move {
            rt.sleep(Duration::from_millis(20)).await;
            let _ = tx.send(7);
        })
        .detach();
    assert_eq!(runtime.timeout(STEP, rx).await.unwrap().unwrap(), 7);

    // Timers: sleep waits, timeout elapses, a reset timer fires at its new deadline.
    let start = runtime.now();
    runtime.sleep(Duration::from_millis(30)).await;
    assert!(runtime.now() - start >= Duration::from_millis(30));
    assert!(runtime.timeout(Duration::from_millis(20), futures_util::future::pending::<()>()).await.is_err());
    let mut timer = runtime.sleep_until(runtime.now() + Duration::from_secs(3600));
    timer.as_mut().reset(runtime.now() + Duration::from_millis(10));
    assert!(runtime.timeout(STEP, timer).await.is_ok());
}

async fn hs256_handshake_accepted(runtime: Arc<dyn Runtime>) {
    let mut server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let claims =
        TokenClaims::new(["streamkit::*"], Duration::from_secs(60)).with_subject("svc").with_tenant("t-1");
    let svc_token = hs256().sign(&claims).unwrap();
    let mut connection =
        dial(&*runtime, &format!("{}/", server.url), &DialOptions::new(svc_token)).await.unwrap();
    assert_eq!(connection.codec(), Codec::Json);
    match server.next_event().await {
        Event::Accepted { principal, codec, peer } => {
            assert_eq!(principal.scopes, StoreScopes::All);
            assert_eq!(principal.subject.as_deref(), Some("svc"));
            assert_eq!(principal.tenant_id.as_deref(), Some("t-1"));
            assert_eq!(principal.expires_at.as_u64(), claims.exp * 1000);
            assert_eq!(codec, Codec::Json);
            assert!(peer.ip().is_loopback());
        }
        other => panic!("unexpected {other:?}"),
    }
    connection.send_batch([&b"{\"hello\":1}"[..]]).await.unwrap();
    let echoed = runtime.timeout(STEP, connection.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(&echoed[..], b"{\"hello\":1}");

    // A single-store scope is accepted and reported as such.
    let store_token = token(&[&format!("streamkit::{STORE}")]);
    let _c = dial(&*runtime, &server.url, &DialOptions::new(store_token)).await.unwrap();
    match server.next_event().await {
        Event::Accepted { principal, .. } => {
            assert_eq!(principal.scopes, StoreScopes::Stores(vec![STORE.parse().unwrap()]));
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn refused_tokens_get_401(runtime: Arc<dyn Runtime>) {
    let server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let t = now();
    let sign = |claims: serde_json::Value| format!("Bearer {}", hs256().sign_claims(&claims).unwrap());
    let bearer = |scopes: &[&str]| format!("Bearer {}", token(scopes));

    assert_eq!(refused(&server, None).await, AuthError::MissingAuthorization);
    assert_eq!(
        refused(&server, Some(&format!("Basic {}", token(&["streamkit::*"])))).await,
        AuthError::NotBearer
    );
    assert_eq!(refused(&server, Some("Bearer")).await, AuthError::NotBearer);
    // The scheme is case-insensitive: a lowercase "bearer" with a forged token fails on the signature.
    let forged = TokenSigner::hs256(b"other-secret").unwrap();
    let forged = forged.sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60))).unwrap();
    assert_eq!(refused(&server, Some(&format!("bearer {forged}"))).await, AuthError::InvalidSignature);
    let expired = sign(json!({"scopes": ["streamkit::*"], "exp": t - 60}));
    assert_eq!(refused(&server, Some(&expired)).await, AuthError::Expired);
    let no_exp = sign(json!({"scopes": ["streamkit::*"]}));
    assert_eq!(refused(&server, Some(&no_exp)).await, AuthError::MissingExpiry);
    let early = sign(json!({"scopes": ["streamkit::*"], "exp": t + 60, "nbf": t + 60}));
    assert_eq!(refused(&server, Some(&early)).await, AuthError::NotYetValid);
    let future_iat = sign(json!({"scopes": ["streamkit::*"], "exp": t + 60, "iat": t + 60}));
    assert_eq!(refused(&server, Some(&future_iat)).await, AuthError::IssuedInFuture);
    assert_eq!(
        refused(&server, Some(&bearer(&["other::*"]))).await,
        AuthError::Scope(ScopeError::NoStreamkitScope)
    );
    assert_eq!(
        refused(&server, Some(&bearer(&["streamkit::not-a-uuid"]))).await,
        AuthError::Scope(ScopeError::MalformedStoreScope("streamkit::not-a-uuid".into()))
    );
    // A valid store scope does not rescue a malformed one (no partial access).
    let mixed = bearer(&[&format!("streamkit::{STORE}"), "streamkit::nope"]);
    assert!(matches!(
        refused(&server, Some(&mixed)).await,
        AuthError::Scope(ScopeError::MalformedStoreScope(_))
    ));
    assert!(matches!(refused(&server, Some("Bearer not-a-jwt")).await, AuthError::Malformed(_)));

    // The client dial reports 401 as its own, permanent, error.
    let error = dial(&*runtime, &server.url, &DialOptions::new(token(&["other::*"]))).await.unwrap_err();
    assert!(matches!(error, DialError::Unauthorized), "{error:?}");
    assert!(error.is_permanent());
}

async fn rs256_and_es256_with_pinned_algorithm(runtime: Arc<dyn Runtime>) {
    let claims = TokenClaims::new(["streamkit::*"], Duration::from_secs(60));
    let rs_token = TokenSigner::rs256_pem(RS_PRIVATE).unwrap().sign(&claims).unwrap();
    let es_token = TokenSigner::es256_pem(ES_PRIVATE).unwrap().sign(&claims).unwrap();
    let hs_token = hs256().sign(&claims).unwrap();
    // Algorithm confusion: an HMAC token keyed with the server's public key.
    let confused = TokenSigner::hs256(RS_PUBLIC).unwrap().sign(&claims).unwrap();

    let mut rs_server = TestServer::start(&runtime, JwtVerifier::rs256_pem(RS_PUBLIC).unwrap());
    dial(&*runtime, &rs_server.url, &DialOptions::new(rs_token.clone())).await.unwrap();
    assert!(matches!(rs_server.next_event().await, Event::Accepted { .. }));
    for token in [&hs_token, &es_token, &confused] {
        assert_eq!(refused(&rs_server, Some(&format!("Bearer {token}"))).await, AuthError::WrongAlgorithm);
    }

    let mut es_server = TestServer::start(&runtime, JwtVerifier::es256_pem(ES_PUBLIC).unwrap());
    dial(&*runtime, &es_server.url, &DialOptions::new(es_token)).await.unwrap();
    assert!(matches!(es_server.next_event().await, Event::Accepted { .. }));
    for token in [&hs_token, &rs_token] {
        assert_eq!(refused(&es_server, Some(&format!("Bearer {token}"))).await, AuthError::WrongAlgorithm);
    }
    // Same algorithm, another key pair: a signature failure.
    let other_es = include_bytes!("data/es256-other-public.pem");
    let mut other_server = TestServer::start(&runtime, JwtVerifier::es256_pem(other_es).unwrap());
    let es_token = TokenSigner::es256_pem(ES_PRIVATE).unwrap().sign(&claims).unwrap();
    assert_eq!(
        refused(&other_server, Some(&format!("Bearer {es_token}"))).await,
        AuthError::InvalidSignature
    );
    assert!(runtime.timeout(Duration::from_millis(50), other_server.events.next()).await.is_err());
}

async fn probes_readiness_metrics_and_404(runtime: Arc<dyn Runtime>) {
    let server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let rt = &*runtime;
    server.readiness.set(ReadinessState::Starting);

    let health = http_get(rt, server.addr, "/healthz").await;
    assert_eq!((health.status, &health.body[..]), (200, &b"ok"[..]));
    let ready = http_get(rt, server.addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    // Upgrades wait for readiness: a starting server answers 503 even to a valid token.
    let early = dial(rt, &server.url, &DialOptions::new(token(&["streamkit::*"]))).await.unwrap_err();
    assert!(matches!(early, DialError::Status(503)) && !early.is_permanent(), "{early:?}");

    server.readiness.set_ready();
    assert_eq!(http_get(rt, server.addr, "/readyz").await.status, 200);
    assert_eq!(http_get(rt, server.addr, "/readyz?full=1").await.status, 200);

    let metrics = http_get(rt, server.addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let text = String::from_utf8(metrics.body).unwrap();
    // Every family is declared (counters without their `_total` suffix, as OpenMetrics has it); the
    // error family exists because the refused dial above was counted.
    for (family, kind) in [
        ("connections_active", "gauge"),
        ("connections_accepted", "counter"),
        ("streams_active", "gauge"),
        ("operations", "counter"),
        ("produce_records", "counter"),
        ("produce_bytes", "counter"),
        ("commit_latency_seconds", "histogram"),
        ("commit_batch_size", "histogram"),
        ("subscriptions_active", "gauge"),
        ("presence_workers", "gauge"),
        ("store_transactions", "counter"),
        ("store_fsyncs", "counter"),
        ("stores_open", "gauge"),
        ("received_bytes", "counter"),
        ("sent_frames", "counter"),
        ("errors", "counter"),
    ] {
        let declaration = format!("# TYPE streamkit_{family} {kind}\n");
        assert!(text.contains(&declaration), "{declaration:?} missing from\n{text}");
    }
    assert!(text.contains("streamkit_connections_accepted_total 0\n") && text.ends_with("# EOF\n"));
    assert!(text.contains("streamkit_operations_total{op=\"consume_space\",outcome=\"cancelled\"} 0\n"));
    assert!(text.contains("streamkit_errors_total{kind=\"handshake\"} 1\n"));

    let missing = http_get(rt, server.addr, "/nope").await;
    assert_eq!((missing.status, &missing.body[..]), (404, &b"404 page not found\n"[..]));
    assert_eq!(http_get(rt, server.addr, "/streamz/extra").await.status, 404);
    let post =
        http_raw(rt, server.addr, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(post.status, 405);

    server.readiness.set_draining();
    assert_eq!(http_get(rt, server.addr, "/readyz").await.status, 503);
    assert_eq!(http_get(rt, server.addr, "/healthz").await.status, 200);
    let answer = http_raw(rt, server.addr, upgrade_request(server.addr, Some("Bearer x")).as_bytes()).await;
    assert_eq!(answer.status, 503);
}

async fn cbor_negotiated_json_by_default(runtime: Arc<dyn Runtime>) {
    let mut server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let rt = &*runtime;

    // Our client offering CBOR gets it, and binary payloads that are not UTF-8 go through.
    let options = DialOptions::new(token(&["streamkit::*"])).with_cbor(true);
    let mut connection = dial(rt, &server.url, &options).await.unwrap();
    assert_eq!(connection.codec(), Codec::Cbor);
    assert!(matches!(server.next_event().await, Event::Accepted { codec: Codec::Cbor, .. }));
    connection.send_batch([vec![0xa1, 0xff, 0x00]]).await.unwrap();
    assert_eq!(&rt.timeout(STEP, connection.recv()).await.unwrap().unwrap().unwrap()[..], [0xa1, 0xff, 0x00]);

    // On the wire: the subprotocol is answered and frames are binary.
    let (mut ws, response) = raw_client(rt, &server, Some(&format!("other, {CBOR_SUBPROTOCOL}"))).await;
    assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), CBOR_SUBPROTOCOL);
    assert!(matches!(server.next_event().await, Event::Accepted { codec: Codec::Cbor, .. }));
    ws.send(Message::binary(b"batch:1".to_vec())).await.unwrap();
    assert_eq!(rt.timeout(STEP, ws.next()).await.unwrap().unwrap().unwrap(), Message::binary(b"0".to_vec()));

    // Without the subprotocol: JSON, text frames, no subprotocol header.
    let (mut ws, response) = raw_client(rt, &server, None).await;
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    assert!(matches!(server.next_event().await, Event::Accepted { codec: Codec::Json, .. }));
    ws.send(Message::text("batch:1")).await.unwrap();
    assert_eq!(rt.timeout(STEP, ws.next()).await.unwrap().unwrap().unwrap(), Message::text("0"));

    // A JSON connection refuses to put non-UTF-8 bytes in a text frame.
    let mut json = dial(rt, &server.url, &DialOptions::new(token(&["streamkit::*"]))).await.unwrap();
    assert!(matches!(json.feed(vec![0xff]).await, Err(WsError::InvalidUtf8)));
}

async fn batches_arrive_complete_and_in_order(runtime: Arc<dyn Runtime>) {
    let server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let rt = &*runtime;
    for cbor in [false, true] {
        let options = DialOptions::new(token(&["streamkit::*"])).with_cbor(cbor);
        let (mut reader, mut writer) = dial(rt, &server.url, &options).await.unwrap().split();

        // Server → client: one batch of many frames, some large enough to pass the write buffer.
        writer.send_batch([&b"batch:2000"[..]]).await.unwrap();
        for i in 0..2000 {
            let frame = rt.timeout(STEP, reader.recv()).await.unwrap().unwrap().unwrap();
            assert_eq!(frame, i.to_string().as_bytes());
        }

        // Client → server → client, while another task reads: frames of up to 54 KB stay whole.
        let frames: Vec<Vec<u8>> =
            (0..200).map(|i| format!("{i:>width$}", width = 1 + (i % 7) * 9_000).into_bytes()).collect();
        let expected = frames.clone();
        let read = rt.spawn(async move {
            for frame in expected {
                let got = reader.recv().await.unwrap().unwrap();
                assert_eq!(got.len(), frame.len());
                assert_eq!(got, frame);
            }
            reader
        });
        writer.send_batch(frames).await.unwrap();
        let mut reader = rt.timeout(STEP, read).await.unwrap().unwrap();

        writer.close().await.unwrap();
        assert!(rt.timeout(STEP, reader.recv()).await.unwrap().unwrap().is_none());
    }
}

/// Counts the writes that reach the socket.
struct CountingStream {
    inner: streamkit::runtime::BoxedStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl futures_io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl futures_io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

async fn a_batch_is_written_with_one_write(runtime: Arc<dyn Runtime>) {
    use async_tungstenite::WebSocketStream;
    use async_tungstenite::tungstenite::protocol::Role;
    use streamkit::ws::WsConnection;

    let rt = &*runtime;
    let listener = rt.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = CountingStream { inner: rt.connect(addr).await.unwrap(), writes: writes.clone() };
    let (accepted, _) = listener.accept().await.unwrap();

    let client = WebSocketStream::from_raw_socket(Box::new(counting) as _, Role::Client, None).await;
    let server = WebSocketStream::from_raw_socket(accepted, Role::Server, None).await;
    let mut client = WsConnection::new(client, Codec::Json);
    let mut server = WsConnection::new(server, Codec::Json);

    client.send_batch((0..100).map(|i| format!("{{\"n\":{i}}}").into_bytes())).await.unwrap();
    assert_eq!(writes.load(std::sync::atomic::Ordering::Relaxed), 1, "100 small frames, one socket write");
    for i in 0..100 {
        let frame = rt.timeout(STEP, server.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(frame, format!("{{\"n\":{i}}}").as_bytes());
    }
}

async fn frames_sent_with_the_upgrade_are_kept(runtime: Arc<dyn Runtime>) {
    let mut server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let rt = &*runtime;
    let mut bytes =
        upgrade_request(server.addr, Some(&format!("Bearer {}", token(&["streamkit::*"])))).into_bytes();
    // A masked text frame "hi" sent in the same write as the request.
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | 2]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    let mut stream = rt.connect(server.addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    assert!(matches!(server.next_event().await, Event::Accepted { .. }));

    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // Read the 101 head and the echoed (unmasked) frame.
    while !answer.ends_with(&[0x81, 2, b'h', b'i']) {
        let n = rt.timeout(STEP, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    // RFC 6455's sample key and its accept value.
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
}

async fn pings_answered_close_benign_and_size_capped(runtime: Arc<dyn Runtime>) {
    let mut server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let rt = &*runtime;
    let (mut ws, _) = raw_client(rt, &server, None).await;
    assert!(matches!(server.next_event().await, Event::Accepted { .. }));
    // The server is idle in `recv`; the ping is answered anyway.
    ws.send(Message::Ping(b"p1".to_vec().into())).await.unwrap();
    assert_eq!(
        rt.timeout(STEP, ws.next()).await.unwrap().unwrap().unwrap(),
        Message::Pong(b"p1".to_vec().into())
    );
    ws.close(None).await.unwrap();
    // The server answers the close and its reader ends cleanly.
    while let Some(message) = rt.timeout(STEP, ws.next()).await.unwrap() {
        assert!(matches!(message, Ok(Message::Close(_))), "{message:?}");
    }
    assert!(matches!(server.next_event().await, Event::Ended(Ok(()))));

    // A message over the 8 MiB cap ends the connection with an error instead of being buffered.
    let (mut ws, _) = raw_client(rt, &server, None).await;
    assert!(matches!(server.next_event().await, Event::Accepted { .. }));
    let oversized = vec![b'x'; streamkit::core::wire::DEFAULT_MAX_FRAME + 1];
    let _ = rt.timeout(STEP, ws.send(Message::binary(oversized))).await.unwrap();
    match server.next_event().await {
        Event::Ended(Err(error)) => assert!(error.contains("too long") || error.contains("size"), "{error}"),
        other => panic!("expected an error end, got {other:?}"),
    }

    // A peer that vanishes without a close frame ends the server side too (with an error).
    let (ws, _) = raw_client(rt, &server, None).await;
    assert!(matches!(server.next_event().await, Event::Accepted { .. }));
    drop(ws);
    assert!(matches!(server.next_event().await, Event::Ended(_)));
}

async fn malformed_and_slow_requests_are_bounded(runtime: Arc<dyn Runtime>) {
    let server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let rt = &*runtime;
    let auth = format!("Bearer {}", token(&["streamkit::*"]));

    let garbage = http_raw(rt, server.addr, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n").await;
    assert_eq!(garbage.status, 400);
    let huge = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http_raw(rt, server.addr, huge.as_bytes()).await.status, 431);

    // Valid token, broken upgrades.
    let no_key = upgrade_request(server.addr, Some(&auth))
        .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    assert_eq!(http_raw(rt, server.addr, no_key.as_bytes()).await.status, 400);
    let old = upgrade_request(server.addr, Some(&auth)).replace("Version: 13", "Version: 8");
    let answer = http_raw(rt, server.addr, old.as_bytes()).await;
    assert_eq!((answer.status, answer.header("sec-websocket-version")), (426, Some("13")));
    let plain = format!("GET /streamz HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n");
    assert_eq!(http_raw(rt, server.addr, plain.as_bytes()).await.status, 400);
    let http10 = upgrade_request(server.addr, Some(&auth)).replace("HTTP/1.1", "HTTP/1.0");
    assert_eq!(http_raw(rt, server.addr, http10.as_bytes()).await.status, 400);
    // Two Authorization headers are ambiguous.
    let twice = upgrade_request(server.addr, Some(&auth))
        .replace("\r\n\r\n", &format!("\r\nAuthorization: {auth}\r\n\r\n"));
    assert_eq!(http_raw(rt, server.addr, twice.as_bytes()).await.status, 401);

    // Slowloris: a head that never completes is dropped after the handshake timeout (400 ms here).
    let mut slow = rt.connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = rt.now();
    let mut sink = Vec::new();
    let _ = rt.timeout(STEP, slow.read_to_end(&mut sink)).await.expect("server closes a stalled request");
    assert!(sink.is_empty());
    // Not dropped at once (the deadline runs from accept, slightly before `start`).
    assert!(rt.now() - start >= Duration::from_millis(200));
    assert_eq!(server.last_rejection(), Some(Rejection::Timeout));

    // Pending handshakes are capped: with a cap of 1, a second connection is closed at once while
    // the first one stalls.
    let capped = HttpConfig { max_pending_handshakes: 1, ..HttpConfig::default() };
    let server = TestServer::start_with(&runtime, JwtVerifier::hs256(SECRET).unwrap(), capped);
    let mut first = rt.connect(server.addr).await.unwrap();
    first.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // Wait until the server holds the first connection in its only slot.
    let slot_taken = async {
        while server.front.pending_handshakes() == 0 {
            rt.sleep(Duration::from_millis(5)).await;
        }
    };
    rt.timeout(STEP, slot_taken).await.unwrap();
    let mut second = rt.connect(server.addr).await.unwrap();
    let mut sink = Vec::new();
    let _ = rt.timeout(STEP, second.read_to_end(&mut sink)).await.expect("second connection closed at once");
    assert!(sink.is_empty());
    assert_eq!(server.last_rejection(), Some(Rejection::TooManyPending));
    // Finishing the first request frees the slot.
    first.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    rt.timeout(STEP, first.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(http_get(rt, server.addr, "/healthz").await.status, 200);
}

#[cfg(feature = "tls")]
async fn wss_dial_with_custom_roots(runtime: Arc<dyn Runtime>) {
    use futures_rustls::TlsAcceptor;
    use futures_rustls::rustls::pki_types::pem::PemObject;
    use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use futures_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig, crypto};

    let rt = &*runtime;
    let provider = || Arc::new(crypto::aws_lc_rs::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(include_bytes!("data/tls-server.pem")).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("data/tls-server-key.pem")).unwrap();
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(include_bytes!("data/tls-ca.pem")).unwrap()).unwrap();
    let client_config = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    // TLS terminated in-process: accepted TCP → TLS → the front's `serve_connection`.
    let mut server = TestServer::start(&runtime, JwtVerifier::hs256(SECRET).unwrap());
    let listener = rt.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let (front, spawner) = (server.front.clone(), runtime.clone());
    runtime
        .spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (front, acceptor) = (front.clone(), acceptor.clone());
                spawner
                    .spawn(async move {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            front.serve_connection(Box::new(tls), peer).await;
                        }
                    })
                    .detach();
            }
        })
        .detach();

    let options = DialOptions::new(token(&["streamkit::*"])).with_tls_config(client_config);
    // "localhost" may resolve to ::1 first, where nothing listens: the dial moves on to 127.0.0.1.
    for url in [format!("wss://localhost:{port}/"), format!("wss://127.0.0.1:{port}")] {
        let mut connection = dial(rt, &url, &options.clone().with_cbor(true)).await.unwrap();
        assert_eq!(connection.codec(), Codec::Cbor);
        assert!(matches!(server.next_event().await, Event::Accepted { codec: Codec::Cbor, .. }));
        connection.send_batch([&b"batch:3"[..]]).await.unwrap();
        for i in 0..3 {
            let frame = rt.timeout(STEP, connection.recv()).await.unwrap().unwrap().unwrap();
            assert_eq!(frame, i.to_string().as_bytes());
        }
        connection.close().await.unwrap();
        assert!(matches!(server.next_event().await, Event::Ended(Ok(()))));
    }

    // The default (Mozilla) roots do not trust the test CA.
    let untrusted = dial(rt, &format!("wss://localhost:{port}"), &DialOptions::new(token(&["streamkit::*"])))
        .await
        .unwrap_err();
    assert!(matches!(untrusted, DialError::Tls(_)), "{untrusted:?}");
    // A refused token over TLS is still a distinct 401.
    let refused = dial(
        rt,
        &format!("wss://localhost:{port}"),
        &DialOptions::new("x.y.z").with_tls_config(options.tls.clone().unwrap()),
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, DialError::Unauthorized), "{refused:?}");
}
