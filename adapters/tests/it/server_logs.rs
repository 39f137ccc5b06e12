//! The real `streamkit serve` binary logging attacker-controlled text to a file: a token header
//! (logged before authentication) and a space name (logged after it) that try to forge log lines and
//! colour the terminal. Text logs must hold them escaped, JSON logs as valid JSON, and neither may
//! contain an escape character. A flood of refused tokens must not become a flood of log lines.
#![cfg(feature = "cli")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use streamkit::client::{Client, ClientOptions, static_token};
use streamkit::core::api::Record;
use streamkit::runtime::{Runtime, TokioRuntime};

use crate::support::{announced_address, stdout_lines, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_streamkit");
const SECRET: &str = "server-logs-secret";

/// The header of the pre-authentication attack, as JSON text: `\n` and `\u001b` are JSON escapes, so
/// the decoded `alg` holds a real newline and a real ESC.
const FORGED_HEADER: &str = r#"{"alg":"HS256\n<forged line>\u001b[31m","typ":"JWT"}"#;
/// What the decoded `alg` looks like in a text log.
const FORGED_ALG_ESCAPED: &str = r"HS256\n<forged line>\x1b[31m";
/// The space name of the post-authentication attack.
const FORGED_SPACE: &str = "orders\n<forged space>\u{1b}[31m";
/// What it looks like in a text log.
const FORGED_SPACE_ESCAPED: &str = r"orders\n<forged space>\x1b[31m";

/// A `streamkit serve` child with stderr in a file; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Its stdout, drained by a thread.
    _stdout: mpsc::Receiver<String>,
}

impl Server {
    fn start(log: &Path, extra_args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
            .args(extra_args)
            .env("STREAMKIT_JWT_SECRET", SECRET)
            .env("STREAMKIT_LOG", "info")
            .env_remove("STREAMKIT_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let lines = stdout_lines(&mut child);
        let (addr, _) = announced_address(&lines);
        Self { child, addr, _stdout: lines }
    }

    /// SIGTERM, then waits for the exit, so everything logged is in the file.
    fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends an upgrade request whose bearer token has the forged header; returns the status line.
fn send_forged_token(addr: SocketAddr) -> String {
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(FORGED_HEADER),
        URL_SAFE_NO_PAD.encode(r#"{"scopes":["streamkit::*"],"exp":4102444800}"#),
        URL_SAFE_NO_PAD.encode("not a signature")
    );
    let request = format!(
        "GET /streamz HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// Produces to [`FORGED_SPACE`] with a valid token, starting at sequence 2 of an empty segment: the
/// server closes the stream with a sequence gap and logs the space. Returns the error text.
fn produce_to_forged_space(addr: SocketAddr) -> String {
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::new(tokio.handle().clone()));
    let signer = streamkit::auth::TokenSigner::hs256(SECRET.as_bytes()).unwrap();
    let token =
        signer.sign(&streamkit::auth::TokenClaims::new(["streamkit::*"], Duration::from_secs(300))).unwrap();
    tokio.block_on(async move {
        let client =
            Client::connect(runtime, format!("ws://{addr}"), static_token(token), ClientOptions::default())
                .await
                .expect("client connects");
        let records = futures_util::stream::iter([Record::new(2, "x")]);
        let mut acks = client.produce(uuid::Uuid::new_v4(), FORGED_SPACE, "segment", records);
        let error = loop {
            match tokio::time::timeout(Duration::from_secs(30), acks.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(error))) => break error.to_string(),
                other => panic!("expected a sequence gap, got {other:?}"),
            }
        };
        client.close().await;
        error
    })
}

/// Reads `log` until it contains every one of `needles` (the server writes asynchronously).
fn wait_for_log(log: &Path, needles: &[&str]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = std::fs::read(log).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if needles.iter().all(|needle| text.contains(needle)) {
            return bytes;
        }
        assert!(Instant::now() < deadline, "log never showed {needles:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs both attacks against a server logging with `extra_args`; the whole log once it stopped.
fn attacked_log(dir: &Path, extra_args: &[&str]) -> Vec<u8> {
    let log = dir.join("stderr.log");
    let server = Server::start(&log, extra_args);
    assert_eq!(send_forged_token(server.addr), "HTTP/1.1 401 Unauthorized");
    let error = produce_to_forged_space(server.addr);
    assert!(error.contains("sequence gap"), "{error}");
    wait_for_log(&log, &["handshake refused: unauthorized", "stream closed with error"]);
    server.stop();
    std::fs::read(&log).unwrap()
}

#[test]
fn text_logs_escape_attacker_strings() {
    let dir = tempfile::tempdir().unwrap();
    let log = attacked_log(dir.path(), &[]);
    let text = String::from_utf8(log.clone()).expect("the log is UTF-8");
    assert!(!log.contains(&0x1b), "an ESC reached the log:\n{text}");
    for line in text.lines() {
        assert!(!line.starts_with("<forged"), "forged line {line:?} in:\n{text}");
    }
    let refused = text.lines().find(|l| l.contains("handshake refused: unauthorized")).unwrap();
    assert!(refused.contains(FORGED_ALG_ESCAPED), "{refused}");
    let closed = text.lines().find(|l| l.contains("stream closed with error")).unwrap();
    assert!(closed.contains(&format!("space={FORGED_SPACE_ESCAPED}")), "{closed}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = attacked_log(dir.path(), &["--log-format", "json"]);
    let text = String::from_utf8(log.clone()).expect("the log is UTF-8");
    assert!(!log.contains(&0x1b), "an ESC reached the log:\n{text}");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")))
        .collect();
    assert!(events.iter().all(serde_json::Value::is_object));
    let field = |message: &str, name: &str| {
        events
            .iter()
            .find(|event| event["fields"]["message"] == message)
            .and_then(|event| event["fields"][name].as_str())
            .unwrap_or_else(|| panic!("no {message:?} event with field {name}:\n{text}"))
            .to_owned()
    };
    // The attacker's strings come back intact from the JSON: escaped in the file, not altered.
    assert!(field("handshake refused: unauthorized", "error").contains("HS256\n<forged line>\u{1b}[31m"));
    assert_eq!(field("stream closed with error", "space"), FORGED_SPACE);
}

/// The `suppressed=N` of a text log line, 0 without one.
fn suppressed(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("suppressed="))
        .map_or(0, |count| count.parse().unwrap_or_else(|_| panic!("bad suppressed count in {line}")))
}

#[test]
fn refused_tokens_are_rate_limited_in_the_log() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 125;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let server = Server::start(&log, &[]);
    let addr = server.addr;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(move || {
                for _ in 0..PER_THREAD {
                    assert_eq!(send_forged_token(addr), "HTTP/1.1 401 Unauthorized");
                }
            });
        }
    });
    let flood = started.elapsed();
    // Past the limit's one-second window: this one gets a line, which reports the rest of the flood.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(send_forged_token(addr), "HTTP/1.1 401 Unauthorized");
    server.stop();

    let text = String::from_utf8(std::fs::read(&log).unwrap()).unwrap();
    let lines: Vec<&str> =
        text.lines().filter(|line| line.contains("handshake refused: unauthorized")).collect();
    let reported: u64 = lines.iter().map(|line| suppressed(line)).sum();
    let refused = (THREADS * PER_THREAD + 1) as u64;
    eprintln!("{refused} refusals in {flood:?}: {} lines, {reported} reported suppressed", lines.len());
    // 10 lines per one-second window: the flood touches at most `secs + 2` windows, the last one 1.
    let bound = 10 * (flood.as_secs() as usize + 2) + 1;
    assert!(lines.len() <= bound, "{} lines (at most {bound}) for {refused} refusals:\n{text}", lines.len());
    assert!(lines.len() < 100, "{} lines for {refused} refusals", lines.len());
    assert!(lines.iter().any(|line| suppressed(line) > 0), "no line reports suppressed refusals:\n{text}");
    // The line after the flood reports what the flood's last window dropped (nothing, when that
    // window happened to hold 10 refusals or fewer): either way every refusal is accounted for.
    assert_eq!(lines.len() as u64 + reported, refused, "every refusal is a line or counted in one");
}
