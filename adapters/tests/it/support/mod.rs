//! Test support for the server suites: a server on loopback, tokens, and a small client that drives
//! the core's [`ClientConnection`] over a real WebSocket from [`ws::dial`], on any runtime.
//!
//! [`TestClient`] runs the connection on its own task (reader task + driver task, like the server's
//! connection task): operations are opened with [`TestClient::open`] and read item by item through an
//! [`Op`], or in one go with [`TestClient::call`] / [`TestClient::produce`].
#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_util::future::{Either, select};
use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::clock::WallClock;
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit::server::{RunningServer, ServerConfig, start};
use streamkit::ws::{DialError, DialOptions, dial};
use streamkit_proto::api::{Entry, LeaseResult, Produce, Record, Request, SegmentStatus};
use streamkit_proto::client::{ClientConnection, ClientEvent, ClientItem};
use streamkit_proto::mux::MuxConfig;
use streamkit_proto::stream::{EndReason, StreamEnd};
use streamkit_proto::wire::{Codec, Message};
use uuid::Uuid;

/// The HS256 secret of every test server.
pub const SECRET: &[u8] = b"top-secret";

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Both codecs.
pub const CODECS: [Codec; 2] = [Codec::Json, Codec::Cbor];

/// A loopback address with a free port.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The verifier matching [`token`].
pub fn verifier() -> JwtVerifier {
    JwtVerifier::hs256(SECRET).unwrap()
}

/// A memory-store server configuration on a free loopback port.
pub fn memory_config() -> ServerConfig {
    let mut config = ServerConfig::memory(any_port(), verifier());
    config.shutdown_grace = Duration::from_secs(2);
    config
}

/// A token for `scopes`, valid for `ttl`.
pub fn token_for<S: Into<String>>(scopes: impl IntoIterator<Item = S>, ttl: Duration) -> String {
    TokenSigner::hs256(SECRET).unwrap().sign(&TokenClaims::new(scopes, ttl)).unwrap()
}

/// A token for every store, valid for a minute.
pub fn admin_token() -> String {
    token_for(["streamkit::*"], Duration::from_secs(60))
}

/// Starts a server.
pub async fn serve(runtime: &Arc<dyn Runtime>, config: ServerConfig) -> RunningServer {
    start(runtime.clone(), config).await.expect("server starts")
}

/// The `ws://` base URL of a server.
pub fn url(server: &RunningServer) -> String {
    format!("ws://{}", server.local_addr())
}

/// Runs `future` for at most [`PATIENCE`], failing the test with `what` otherwise.
pub async fn within<F: Future>(runtime: &Arc<dyn Runtime>, what: &str, future: F) -> F::Output {
    match runtime.timeout(PATIENCE, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Polls `condition` every 10 ms until it holds, for at most [`PATIENCE`].
pub async fn eventually(runtime: &Arc<dyn Runtime>, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        runtime.sleep(Duration::from_millis(10)).await;
    }
}

/// A plain HTTP GET on the server's listener; returns the status code and the body.
pub async fn http_get(runtime: &Arc<dyn Runtime>, addr: SocketAddr, path: &str) -> (u16, String) {
    use futures_util::{AsyncReadExt, AsyncWriteExt};
    let mut stream = runtime.connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

/// The value of the metric line starting with `prefix` (name and labels) in `/metrics` text.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix) && line[prefix.len()..].starts_with(' '))
        .and_then(|line| line[prefix.len()..].trim().parse().ok())
}

/// What an operation received before it ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The decoded messages, in order.
    pub messages: Vec<Message>,
    /// `Ok` for a clean end, else the reader's error text.
    pub end: Result<(), String>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self { messages: Vec::new(), end: Ok(()) }
    }
}

impl Outcome {
    /// The entries received.
    pub fn entries(&self) -> Vec<Entry> {
        self.messages
            .iter()
            .filter_map(|m| if let Message::Entry(e) = m { Some(e.clone()) } else { None })
            .collect()
    }

    /// The sequences of the entries received.
    pub fn sequences(&self) -> Vec<u64> {
        self.entries().iter().map(|e| e.sequence).collect()
    }

    /// The statuses received.
    pub fn statuses(&self) -> Vec<SegmentStatus> {
        self.messages
            .iter()
            .filter_map(|m| if let Message::Status(s) = m { Some(s.clone()) } else { None })
            .collect()
    }

    /// The names received.
    pub fn names(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| if let Message::Name(n) = m { Some(n.clone()) } else { None })
            .collect()
    }

    /// The lease results received.
    pub fn leases(&self) -> Vec<LeaseResult> {
        self.messages
            .iter()
            .filter_map(|m| if let Message::LeaseResult(r) = m { Some(r.clone()) } else { None })
            .collect()
    }

    /// Fails the test unless the operation ended cleanly.
    pub fn ok(self) -> Self {
        assert_eq!(self.end, Ok(()), "operation failed after {:?}", self.messages);
        self
    }
}

enum Command {
    Open { store: Uuid, request: Request, items: Sender<ClientItem>, reply: Sender<Result<Uuid, String>> },
    Send { channel: Uuid, message: Message },
    CloseSend { channel: Uuid },
    Cancel { channel: Uuid },
    Close,
}

/// A client connection to a test server; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct TestClient {
    commands: Sender<Command>,
    closed: Receiver<String>,
    runtime: Arc<dyn Runtime>,
}

/// One operation (logical stream) of a [`TestClient`].
pub struct Op {
    /// The channel id.
    pub channel: Uuid,
    items: Receiver<ClientItem>,
    client: TestClient,
}

impl Op {
    /// The next item; `None` once the stream ended and everything was read (or the client is gone).
    pub async fn next(&self) -> Option<ClientItem> {
        self.items.recv().await.ok()
    }

    /// The next message, failing the test if the stream ends first or nothing comes within
    /// [`PATIENCE`].
    pub async fn message(&self) -> Message {
        match within(&self.client.runtime, "next message", self.next()).await {
            Some(ClientItem::Message(message)) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Sends a later message (a record, a presence renewal).
    pub async fn send(&self, message: Message) {
        let _ = self.client.commands.send(Command::Send { channel: self.channel, message }).await;
    }

    /// Ends what the client sends (`mux::close`).
    pub async fn close_send(&self) {
        let _ = self.client.commands.send(Command::CloseSend { channel: self.channel }).await;
    }

    /// Cancels the operation like the Go client (`mux::close` with `context canceled`).
    pub async fn cancel(&self) {
        let _ = self.client.commands.send(Command::Cancel { channel: self.channel }).await;
    }

    /// Reads until the stream ends.
    pub async fn collect(self) -> Outcome {
        let runtime = self.client.runtime.clone();
        within(&runtime, "operation to end", async move {
            let mut outcome = Outcome::default();
            loop {
                match self.next().await {
                    Some(ClientItem::Message(message)) => outcome.messages.push(message),
                    Some(ClientItem::Invalid(error)) => panic!("undecodable answer: {error}"),
                    Some(ClientItem::End(StreamEnd::Finished)) => return outcome,
                    Some(ClientItem::End(StreamEnd::Failed(error))) => {
                        outcome.end = Err(error.to_string());
                        return outcome;
                    }
                    None => {
                        outcome.end = Err("client gone".to_owned());
                        return outcome;
                    }
                }
            }
        })
        .await
    }
}

impl TestClient {
    /// Dials `base_url` with `token`, speaking `codec`.
    pub async fn connect(
        runtime: &Arc<dyn Runtime>,
        base_url: &str,
        token: &str,
        codec: Codec,
    ) -> Result<Self, DialError> {
        let options = DialOptions::new(token).with_cbor(codec == Codec::Cbor);
        let ws = dial(&**runtime, base_url, &options).await?;
        let clock = WallClock::default();
        let seed = rand_seed();
        let conn = ClientConnection::new(codec, MuxConfig::default(), clock.now(), seed);
        let (commands, command_rx) = async_channel::bounded(1024);
        let (closed_tx, closed) = async_channel::bounded(1);
        runtime.spawn(drive(runtime.clone(), conn, ws, command_rx, closed_tx, clock)).detach();
        Ok(Self { commands, closed, runtime: runtime.clone() })
    }

    /// Opens an operation.
    pub async fn open(&self, store: Uuid, request: Request) -> Op {
        self.try_open(store, request).await.expect("the client is connected")
    }

    /// Opens an operation; the reason when the connection is gone (the server died or closed it).
    pub async fn try_open(&self, store: Uuid, request: Request) -> Result<Op, String> {
        let (items, item_rx) = async_channel::unbounded();
        let (reply, answer) = async_channel::bounded(1);
        const GONE: &str = "client gone";
        let open = Command::Open { store, request, items, reply };
        self.commands.send(open).await.map_err(|_| GONE.to_owned())?;
        let channel = answer.recv().await.map_err(|_| GONE.to_owned())??;
        Ok(Op { channel, items: item_rx, client: self.clone() })
    }

    /// Opens an operation, ends the client side at once and reads until it ends.
    pub async fn call(&self, store: Uuid, request: Request) -> Outcome {
        let op = self.open(store, request).await;
        op.close_send().await;
        op.collect().await
    }

    /// Produces `records` to a segment in one operation and reads until it ends.
    /// A connection that is gone ends the produce with an error, as the server's death does: producers
    /// that run until the server dies simply stop.
    pub async fn produce(&self, store: Uuid, space: &str, segment: &str, records: Vec<Record>) -> Outcome {
        let request = Request::Produce(Produce { space: space.into(), segment: segment.into() });
        let op = match self.try_open(store, request).await {
            Ok(op) => op,
            Err(error) => return Outcome { end: Err(error), ..Outcome::default() },
        };
        for record in records {
            op.send(Message::Record(record)).await;
        }
        op.close_send().await;
        op.collect().await
    }

    /// Closes the connection (a `close` frame, then the socket).
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
    }

    /// Waits until the connection is over; returns the reason.
    pub async fn closed(&self) -> String {
        within(&self.runtime, "connection to close", self.closed.recv()).await.unwrap_or_default()
    }

    /// The reason the connection is over, if it is.
    pub fn is_closed(&self) -> Option<String> {
        self.closed.try_recv().ok().or_else(|| self.closed.is_closed().then(String::new))
    }
}

/// Records `first..=last` with payload `r<seq>`.
pub fn records(first: u64, last: u64) -> Vec<Record> {
    (first..=last).map(|seq| Record::new(seq, format!("r{seq}"))).collect()
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

enum Event {
    Frame(Option<bytes::Bytes>),
    Command(Option<Command>),
    Timer,
}

async fn drive(
    runtime: Arc<dyn Runtime>,
    mut conn: ClientConnection,
    ws: streamkit::ws::WsConnection,
    commands: Receiver<Command>,
    closed: Sender<String>,
    clock: WallClock,
) {
    let (mut reader, mut writer) = ws.split();
    let (frames_tx, frames) = async_channel::bounded(64);
    runtime
        .spawn(async move {
            loop {
                let frame = reader.recv().await.ok().flatten();
                let last = frame.is_none();
                if frames_tx.send(frame).await.is_err() || last {
                    break;
                }
            }
        })
        .detach();
    let mut ops: std::collections::HashMap<Uuid, Sender<ClientItem>> = Default::default();
    let mut timer = runtime.sleep(Duration::from_secs(3600));
    let mut reason = String::new();
    loop {
        let deadline = conn.poll_timeout().map(|(at, _)| clock.instant_of(at));
        timer
            .as_mut()
            .reset(deadline.unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(3600)));
        let inputs = select(Box::pin(frames.recv()), Box::pin(commands.recv()));
        let event = match select(inputs, timer.as_mut()).await {
            Either::Left((Either::Left((frame, _)), _)) => Event::Frame(frame.ok().flatten()),
            Either::Left((Either::Right((command, _)), _)) => Event::Command(command.ok()),
            Either::Right(_) => Event::Timer,
        };
        let now = clock.now();
        match event {
            Event::Frame(Some(bytes)) => {
                conn.handle_frame(now, &bytes);
                while let Ok(Some(bytes)) = frames.try_recv() {
                    conn.handle_frame(now, &bytes);
                }
            }
            Event::Frame(None) => conn.handle_transport_closed(now, EndReason::MuxerClosed),
            Event::Command(Some(Command::Open { store, request, items, reply })) => {
                let opened = conn.open(now, store, request).map_err(|e| e.to_string());
                if let Ok(channel) = opened {
                    ops.insert(channel, items);
                }
                let _ = reply.try_send(opened);
            }
            Event::Command(Some(Command::Send { channel, message })) => {
                let _ = conn.send(now, channel, &message);
            }
            Event::Command(Some(Command::CloseSend { channel })) => {
                let _ = conn.close_send(now, channel, None);
            }
            Event::Command(Some(Command::Cancel { channel })) => {
                conn.cancel(now, channel, &EndReason::Canceled);
                ops.remove(&channel);
            }
            Event::Command(Some(Command::Close) | None) => conn.shutdown(now, EndReason::ClientClosed),
            Event::Timer => conn.handle_timeout(now),
        }
        while let Some(event) = conn.poll_event() {
            match event {
                ClientEvent::Readable { channel } => {
                    while let Some(item) = conn.recv(channel) {
                        let end = matches!(item, ClientItem::End(_));
                        if let Some(items) = ops.get(&channel) {
                            let _ = items.try_send(item);
                        }
                        if end {
                            conn.release(channel);
                            ops.remove(&channel);
                        }
                    }
                }
                ClientEvent::Aborted { channel, reason } => {
                    if let Some(items) = ops.remove(&channel) {
                        let _ = items.try_send(ClientItem::End(StreamEnd::Failed(reason)));
                    }
                }
                ClientEvent::Shutdown { reason: why } => reason = why.to_string(),
                ClientEvent::Sent { .. } => {}
            }
        }
        let mut wrote = false;
        let mut failed = false;
        while let Some(frame) = conn.poll_transmit() {
            wrote = true;
            if writer.feed(frame).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed || (wrote && writer.flush().await.is_err()) {
            conn.handle_transport_closed(clock.now(), EndReason::Transport("write failed".into()));
        }
        if conn.is_shut_down() && !conn.has_transmit() {
            // Streams still registered learn about the end from the Aborted events already drained.
            while let Some(event) = conn.poll_event() {
                if let ClientEvent::Aborted { channel, reason } = event
                    && let Some(items) = ops.remove(&channel)
                {
                    let _ = items.try_send(ClientItem::End(StreamEnd::Failed(reason)));
                }
            }
            let _ = writer.close().await;
            break;
        }
    }
    let _ = closed.try_send(reason);
}

/// Polls all `futures` concurrently on the current thread, each first poll in order (a minimal
/// `join_all`: requests they send on their first poll are queued in order).
pub fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    }));
    outputs.into_iter().flatten().collect()
}

// -------------------------------------------------------------------------------------------------
// the `streamkit` binary as a child process

/// The lines a child prints on stdout, read on a thread of their own that keeps draining the pipe
/// (also once nobody listens any more), so the child never blocks on it.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    lines
}

/// Reads `lines` up to `streamkit serve`'s `streamkit listening on ADDR …` line: the address, and the
/// lines printed before it.
pub fn announced_address(lines: &std::sync::mpsc::Receiver<String>) -> (SocketAddr, Vec<String>) {
    let mut before = Vec::new();
    loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("the server printed its address");
        let addr = line
            .strip_prefix("streamkit listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok());
        match addr {
            Some(addr) => return (addr, before),
            None => before.push(line),
        }
    }
}

/// Stops a child with SIGTERM and waits (up to 30 s) for it to exit.
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
