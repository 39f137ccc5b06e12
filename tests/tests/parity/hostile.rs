//! Hostile input over a real socket, written by hand ([`RawSocket`]): garbage frames, bad base64,
//! invalid UTF-8, unknown `$type`, missing content, oversized frames, a flood of streams, and a few
//! hundred random mutations of valid frames. The server answers a bad request on its stream with Go's
//! error text, or closes that one connection (a frame that does not decode, PROTOCOL.md §2.9) — and it keeps
//! serving its other connections, which these tests check after every attack.

use std::net::SocketAddr;
use std::time::Duration;

use streamkit::core::api::{
    ConsumeSegment, Entry, Envelope, GetSegments, GetSpaces, GetStatus, LeaseAcquire, Peek, Presence,
    Request, SubscribeToSegmentStatus,
};
use streamkit::core::wire::{Codec, ControlType, Frame, Message, MessageKind, StreamControl};
use streamkit::server::{RunningServer, ServerConfig};
use streamkit_tests::raw::{RawSocket, json_data, json_frame};
use streamkit_tests::{admin_token, metric, token};
use uuid::Uuid;

/// A server on a tokio runtime, driven from the (blocking) test thread.
struct Target {
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    addr: SocketAddr,
    store: Uuid,
    panics: usize,
    _data: tempfile::TempDir,
}

impl Target {
    fn start(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        streamkit_tests::count_panics();
        let panics = streamkit_tests::panics();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut config = streamkit_tests::server_config(streamkit_tests::any_port(), data.path());
        adjust(&mut config);
        let rt: std::sync::Arc<dyn streamkit::runtime::Runtime> =
            std::sync::Arc::new(streamkit::runtime::TokioRuntime::new(runtime.handle().clone()));
        let server = runtime.block_on(streamkit::server::start(rt, config)).unwrap();
        let addr = server.local_addr();
        Self { runtime, server: Some(server), addr, store: Uuid::new_v4(), panics, _data: data }
    }

    fn connect(&self, codec: Codec) -> RawSocket {
        let socket = RawSocket::connect(self.addr, &admin_token(), codec == Codec::Cbor).expect("upgrade");
        assert_eq!(socket.codec, codec);
        socket
    }

    fn metrics(&self) -> String {
        self.server.as_ref().unwrap().metrics().render()
    }

    /// `socket` still works: a peek on a fresh channel answers with an entry, then a clean close.
    fn assert_serves(&self, socket: &mut RawSocket) {
        let channel = Uuid::new_v4();
        let peek = Request::Peek(Peek { space: "sp".into(), segment: "sg".into() }).into_envelope();
        let codec = socket.codec;
        socket.send_data(self.store, channel, codec.encode_message(&Message::Envelope(peek))).unwrap();
        let frame = socket.recv_on(channel).unwrap().expect("an answer, not a closed connection");
        let entry = codec.decode_message(MessageKind::Entry, frame.payload.as_deref().unwrap()).unwrap();
        assert_eq!(entry, Message::Entry(Entry::empty("sp", "sg")));
        let end = socket.recv_on(channel).unwrap().unwrap();
        assert_eq!(
            StreamControl::parse(codec, end.payload.as_deref().unwrap()),
            Some(StreamControl::close())
        );
    }

    /// A fresh connection of each codec works, and nothing panicked meanwhile (server tasks catch
    /// panics, so only the count shows them).
    fn assert_serves_new_connections(&self) {
        for codec in [Codec::Json, Codec::Cbor] {
            let mut socket = self.connect(codec);
            self.assert_serves(&mut socket);
            socket.close();
        }
        assert_eq!(streamkit_tests::panics(), self.panics, "no server task panicked on hostile input");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

/// The connection is closed by the server within a few seconds.
fn assert_closed(socket: &mut RawSocket, what: &str) -> Vec<Vec<u8>> {
    socket.expect_closed(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The stream-control object ending `channel`, reading past other frames.
fn stream_end(socket: &mut RawSocket, channel: Uuid) -> (ControlType, StreamControl) {
    loop {
        let frame = socket.recv_on(channel).unwrap().expect("the connection stays open");
        let payload = frame.payload.as_deref().unwrap_or_default();
        if let Some(control) = StreamControl::parse(socket.codec, payload) {
            return (frame.control, control);
        }
    }
}

/// Frames that do not decode close their connection (Go: the read loop fails); an open connection
/// next to them keeps working, and new connections are accepted.
#[test]
fn undecodable_frames_close_only_their_connection() {
    let target = Target::start(|_| {});
    let mut bystander = target.connect(Codec::Json);
    let store = target.store;
    let channel = Uuid::new_v4();
    type Attack = Box<dyn Fn(&mut RawSocket) -> std::io::Result<()>>;
    let json_attacks: Vec<(&str, Attack)> = vec![
        ("garbage text", Box::new(|s| s.send_text("not json at all"))),
        ("truncated JSON", Box::new(|s| s.send_text("{\"ControlType\":\"data\",\"store_id\":\""))),
        ("a JSON array", Box::new(|s| s.send_text("[1,2,3]"))),
        ("binary garbage on a JSON connection", Box::new(|s| s.send_binary(&[0xff, 0x00, 0x13, 0x37]))),
        ("invalid UTF-8 in a text frame", Box::new(|s| s.send_raw(0x1, &[b'{', 0xff, 0xfe, b'}']))),
        (
            "bad base64 payload",
            Box::new(move |s| s.send_text(&json_frame("data", store, channel, "\"!!!not base64!!!\""))),
        ),
        (
            "payload of the wrong type",
            Box::new(move |s| s.send_text(&json_frame("data", store, channel, "{\"a\":1}"))),
        ),
        (
            "store id that is not a UUID",
            Box::new(move |s| {
                s.send_text(
                    &json_frame("data", Uuid::nil(), channel, "null")
                        .replace(&Uuid::nil().to_string(), "not-a-uuid"),
                )
            }),
        ),
        ("a WebSocket frame with a reserved opcode", Box::new(|s| s.send_raw(0x3, b"x"))),
    ];
    for (what, attack) in &json_attacks {
        let mut socket = target.connect(Codec::Json);
        attack(&mut socket).unwrap();
        assert_closed(&mut socket, what);
        target.assert_serves(&mut bystander);
    }
    let cbor_attacks: Vec<(&str, Attack)> = vec![
        ("CBOR garbage", Box::new(|s| s.send_binary(&[0xff, 0xff, 0xff]))),
        ("a CBOR map instead of a frame array", Box::new(|s| s.send_binary(&[0xa1, 0x61, b'a', 0x01]))),
        (
            "a truncated CBOR frame",
            Box::new(move |s| {
                let frame = Codec::Cbor.encode_frame(&Frame::data(store, channel, vec![1, 2, 3]));
                s.send_binary(&frame[..frame.len() - 2])
            }),
        ),
        ("a CBOR array of 1000 nested arrays", Box::new(|s| s.send_binary(&[0x81; 1000]))),
    ];
    for (what, attack) in &cbor_attacks {
        let mut socket = target.connect(Codec::Cbor);
        attack(&mut socket).unwrap();
        assert_closed(&mut socket, what);
        target.assert_serves(&mut bystander);
    }
    target.assert_serves_new_connections();
}

/// Requests that decode as frames but not as requests end their stream with Go's error text, and the
/// connection goes on serving.
#[test]
fn bad_requests_get_the_go_error_texts() {
    let target = Target::start(|_| {});
    for codec in [Codec::Json, Codec::Cbor] {
        let mut socket = target.connect(codec);
        let inner = |json: serde_json::Value| match codec {
            Codec::Json => serde_json::to_vec(&json).unwrap(),
            Codec::Cbor => Codec::Cbor.encode_value(&json),
        };
        let peek = "streamkit://api/v1/peek";
        let cases: Vec<(Vec<u8>, String)> = vec![
            (
                inner(serde_json::json!({"$type": "streamkit://api/v1/bogus", "content": {}})),
                "type \"streamkit://api/v1/bogus\" is not registered".into(),
            ),
            (inner(serde_json::json!({"$type": peek})), format!("missing content for type: \"{peek}\"")),
            (
                inner(serde_json::json!({"$type": peek, "content": null})),
                format!("missing content for type: \"{peek}\""),
            ),
            (inner(serde_json::json!({"content": {"space": "s"}})), "missing $type field in envelope".into()),
            (inner(serde_json::json!({"$type": "", "content": {}})), "empty $type discriminator".into()),
            (
                codec.encode_message(&Message::Envelope(Envelope::GetStatus(GetStatus {}))),
                "invalid request msg type: *api.GetStatus".into(),
            ),
            (
                codec.encode_message(&Message::Envelope(Envelope::Presence(Presence {
                    worker_id: Uuid::new_v4(),
                    heartbeat: false,
                    timestamp: 1,
                }))),
                "invalid request msg type: *api.Presence".into(),
            ),
        ];
        for (payload, expected) in cases {
            let channel = Uuid::new_v4();
            socket.send_data(target.store, channel, payload).unwrap();
            let (control, end) = stream_end(&mut socket, channel);
            assert_eq!(control, ControlType::Data, "{codec:?} {expected}");
            assert_eq!(end, StreamControl::close_with(expected.clone()), "{codec:?}");
            assert_eq!(
                end.into_reader_error().map(|r| r.to_string()),
                Some(format!("remote closed stream: {expected}"))
            );
        }
        // Payloads that are not an envelope at all end the stream with an error as well.
        for payload in [b"\"just a string\"".to_vec(), b"12".to_vec(), vec![0xff, 0xfe], Vec::new()] {
            let channel = Uuid::new_v4();
            socket.send_data(target.store, channel, payload.clone()).unwrap();
            let (_, end) = stream_end(&mut socket, channel);
            assert!(matches!(end, StreamControl::Close { err: Some(_) }), "{codec:?} {payload:?}: {end:?}");
        }
        // Unknown control types are ignored (Go logs them), stream ends for unknown channels too.
        let unknown = match codec {
            Codec::Json => json_frame("bogus", target.store, Uuid::new_v4(), "null").into_bytes(),
            Codec::Cbor => {
                let mut frame = Frame::data(target.store, Uuid::new_v4(), vec![]);
                frame.control = ControlType::Unknown("bogus".into());
                Codec::Cbor.encode_frame(&frame)
            }
        };
        socket.send_frame(&unknown).unwrap();
        socket.send_data(target.store, Uuid::new_v4(), StreamControl::close().encode(codec)).unwrap();
        target.assert_serves(&mut socket);
    }

    // A store outside the token's scopes: an `error` frame `access denied` for the offending channel.
    let allowed = Uuid::new_v4();
    let mut scoped =
        RawSocket::connect(target.addr, &token(&[&format!("streamkit::{allowed}")]), false).unwrap();
    let channel = Uuid::new_v4();
    scoped
        .send_text(&json_data(
            target.store,
            channel,
            r#"{"$type":"streamkit://api/v1/get_spaces","content":{}}"#,
        ))
        .unwrap();
    let (control, end) = stream_end(&mut scoped, channel);
    assert_eq!((control, end), (ControlType::Error, StreamControl::error("access denied")));
    assert_eq!(metric(&target.metrics(), "streamkit_errors_total{kind=\"access_denied\"}"), Some(1.0));
    target.assert_serves_new_connections();
}

/// Frames over the limits close their connection before the server buffers them; others are served.
#[test]
fn oversized_frames_close_the_connection() {
    let target = Target::start(|_| {});
    let mut bystander = target.connect(Codec::Cbor);
    // JSON: a text frame over 8 MiB.
    let mut socket = target.connect(Codec::Json);
    let huge = json_data(target.store, Uuid::new_v4(), &"x".repeat(7 << 20));
    assert!(huge.len() > 8 << 20);
    let _ = socket.send_text(&huge); // the server may close while we write
    assert_closed(&mut socket, "a frame over 8 MiB");
    target.assert_serves(&mut bystander);

    // CBOR: a frame under 8 MiB whose payload is over 6 MiB.
    let mut socket = target.connect(Codec::Cbor);
    let _ = socket.send_data(target.store, Uuid::new_v4(), vec![0x61; (6 << 20) + 1]);
    assert_closed(&mut socket, "a payload over 6 MiB");
    target.assert_serves(&mut bystander);

    // A frame header announcing 1 TiB: refused from the header, nothing allocated or awaited.
    for codec in [Codec::Json, Codec::Cbor] {
        let mut socket = target.connect(codec);
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        socket.send_raw_bytes(&header).unwrap();
        assert_closed(&mut socket, "a 1 TiB frame header");
    }
    target.assert_serves(&mut bystander);
    target.assert_serves_new_connections();
}

/// One connection opens far more streams than allowed: every stream over the limit is refused with
/// `too many active streams` (an `error` frame), the server holds the limit and no more, and other
/// connections are unaffected.
#[test]
fn a_flood_of_streams_is_refused_beyond_the_limit() {
    const LIMIT: usize = 32;
    const FLOOD: usize = 2000;
    let target = Target::start(|config| config.max_streams_per_connection = LIMIT);
    let mut bystander = target.connect(Codec::Json);
    for codec in [Codec::Json, Codec::Cbor] {
        let mut flooder = target.connect(codec);
        let subscribe = Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
            space: "flood".into(),
            segment: "*".into(),
            heartbeat_interval_seconds: 0,
        })
        .into_envelope();
        let request = codec.encode_message(&Message::Envelope(subscribe));
        for _ in 0..FLOOD {
            flooder.send_data(target.store, Uuid::new_v4(), request.clone()).unwrap();
        }
        let mut refused = 0;
        while refused < FLOOD - LIMIT {
            let frame = flooder.recv_frame().unwrap().expect("the flooder stays connected");
            assert_eq!(frame.control, ControlType::Error);
            let end = StreamControl::parse(codec, frame.payload.as_deref().unwrap()).unwrap();
            assert_eq!(end, StreamControl::error("too many active streams"));
            refused += 1;
        }
        // The streams within the limit start (a few at a time: see the connection's requests in flight)
        // and the server never holds more than the limit.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let active = metric(&target.metrics(), "streamkit_subscriptions_active").unwrap_or(0.0);
            assert!(active <= LIMIT as f64, "{codec:?}: {active} subscriptions");
            if active == LIMIT as f64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{codec:?}: {active} of {LIMIT} subscriptions started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        target.assert_serves(&mut bystander);
        flooder.close();
        assert_closed(&mut flooder, "the flooder's close");
        // Once the flooder is gone, so are its streams.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(&target.metrics(), "streamkit_subscriptions_active") != Some(0.0) {
            assert!(std::time::Instant::now() < deadline, "the flooder's streams are released");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let text = target.metrics();
    assert_eq!(
        metric(&text, "streamkit_errors_total{kind=\"too_many_streams\"}"),
        Some((2 * (FLOOD - LIMIT)) as f64)
    );
    target.assert_serves_new_connections();
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Hundreds of mutated valid frames (bytes flipped, cut, repeated, spliced), sent on connections that
/// are reopened whenever the server closes one. The server never goes down: afterwards it serves new
/// connections and its data is intact.
#[test]
fn random_mutations_of_valid_frames_never_break_the_server() {
    let target = Target::start(|config| config.max_streams_per_connection = 256);
    let mut rng = Rng(0x5eed_1234_9876_abcd);
    let store = target.store;
    for codec in [Codec::Json, Codec::Cbor] {
        let requests: Vec<Vec<u8>> = [
            Request::Peek(Peek { space: "sp".into(), segment: "sg".into() }),
            Request::GetSpaces(GetSpaces {}),
            Request::ConsumeSegment(ConsumeSegment {
                space: "sp".into(),
                segment: "sg".into(),
                max_sequence: 5,
                ..Default::default()
            }),
            Request::Produce(streamkit::core::api::Produce { space: "fuzz".into(), segment: "sg".into() }),
        ]
        .into_iter()
        .map(|r| {
            codec.encode_frame(&Frame::data(
                store,
                Uuid::new_v4(),
                codec.encode_message(&Message::Envelope(r.into_envelope())),
            ))
        })
        .collect();
        let mut socket = target.connect(codec);
        let mut closed = 0;
        for _ in 0..400 {
            let mut frame = requests[rng.below(requests.len())].clone();
            match rng.below(5) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(frame.len());
                        frame[i] ^= 1 << rng.below(8);
                    }
                }
                1 => frame.truncate(rng.below(frame.len())),
                2 => {
                    let i = rng.below(frame.len());
                    let byte = frame[i];
                    frame.splice(i..i, std::iter::repeat_n(byte, 1 + rng.below(64)));
                }
                3 => {
                    let other = &requests[rng.below(requests.len())];
                    let cut = rng.below(frame.len().min(other.len()));
                    frame.truncate(cut);
                    frame.extend_from_slice(&other[cut..]);
                }
                _ => {
                    let i = rng.below(frame.len());
                    frame[i] = (rng.next() & 0xff) as u8;
                }
            }
            // JSON connections carry text: keep the mutation valid UTF-8 (invalid UTF-8 is covered
            // by `undecodable_frames_close_only_their_connection`).
            let sent = match codec {
                Codec::Json => socket.send_text(&String::from_utf8_lossy(&frame)),
                Codec::Cbor => socket.send_binary(&frame),
            };
            // Drain what the server answered so far; reconnect if it closed the connection.
            if sent.is_err() || !drain(&mut socket) {
                closed += 1;
                socket = target.connect(codec);
            }
        }
        eprintln!("{codec:?}: the server closed {closed} connections over 400 mutated frames");
        // The last mutation may have broken this connection without the close having arrived yet:
        // what must hold is that the server serves, checked on fresh connections below.
        drop(socket);
    }
    target.assert_serves_new_connections();
}

/// Reads whatever is immediately available; false if the connection is closed.
fn drain(socket: &mut RawSocket) -> bool {
    socket.poll_open(Duration::from_millis(2))
}

/// A stream the server ended frees its channel at once (Go's close-send-and-release; PROTOCOL.md §2.6): a
/// client that sends its next request on the same channel id, without a `mux::close` of its own, gets
/// an answer every time, whatever operation the server ended before, with both codecs.
#[test]
fn a_channel_the_server_closed_serves_the_next_request_at_once() {
    let target = Target::start(|_| {});
    for codec in [Codec::Json, Codec::Cbor] {
        let mut socket = target.connect(codec);
        let channel = Uuid::new_v4();
        let request = |socket: &mut RawSocket, request: Request| {
            let envelope = codec.encode_message(&Message::Envelope(request.into_envelope()));
            socket.send_data(target.store, channel, envelope).unwrap();
        };
        // Reads what the server sends on the channel up to its close; the messages before it.
        let answer = |socket: &mut RawSocket, what: &str| -> (usize, Option<String>) {
            let mut messages = 0;
            loop {
                let frame =
                    socket.recv_on(channel).unwrap().unwrap_or_else(|| panic!("{codec:?} {what}: closed"));
                let payload = frame.payload.as_deref().unwrap_or_default();
                match StreamControl::parse(codec, payload) {
                    Some(StreamControl::Close { err }) => return (messages, err),
                    Some(other) => panic!("{codec:?} {what}: {other:?}"),
                    None => messages += 1,
                }
            }
        };
        let space = format!("reuse-{codec:?}");
        let peek = || Request::Peek(Peek { space: space.clone(), segment: "sg".into() });
        request(&mut socket, peek());
        assert_eq!(answer(&mut socket, "peek"), (1, None));
        request(&mut socket, Request::GetSpaces(GetSpaces {}));
        answer(&mut socket, "get_spaces");
        request(&mut socket, Request::GetSegments(GetSegments { space: space.clone() }));
        assert_eq!(answer(&mut socket, "get_segments"), (0, None));
        request(
            &mut socket,
            Request::LeaseAcquire(LeaseAcquire { key: "k".into(), holder: "h".into(), ttl_seconds: 5 }),
        );
        assert_eq!(answer(&mut socket, "lease_acquire"), (1, None));
        let consume =
            ConsumeSegment { space: space.clone(), segment: "sg".into(), limit: 1, ..Default::default() };
        request(&mut socket, Request::ConsumeSegment(consume));
        assert_eq!(answer(&mut socket, "consume_segment"), (0, None));
        // A request the server refuses (a name over the limit) frees the channel too.
        request(&mut socket, Request::Peek(Peek { space: "s".repeat(300), segment: "sg".into() }));
        assert_eq!(
            answer(&mut socket, "refused peek"),
            (0, Some("space exceeds maximum of 256 bytes".into()))
        );
        request(&mut socket, peek());
        assert_eq!(answer(&mut socket, "peek again"), (1, None));
    }
    target.assert_serves_new_connections();
}
