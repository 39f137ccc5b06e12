//! A WebSocket client written by hand over a blocking `TcpStream`, for hostile input: it sends whatever
//! bytes a test gives it (garbage, bad base64, oversized frames, invalid UTF-8), which a well-behaved
//! WebSocket library refuses to produce.
//!
//! Frames from the client are masked as RFC 6455 requires (the server must not reject them for that);
//! frames from the server are read unmasked, one message per frame (the server never fragments).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use streamkit_proto::wire::{Codec, ControlType, Frame, Limits};
use uuid::Uuid;

/// WebSocket opcodes.
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// What the server sent.
#[derive(Debug)]
pub enum Received {
    /// A text or binary message.
    Message(Vec<u8>),
    /// A WebSocket close frame, or the socket ended.
    Closed,
}

/// A raw WebSocket connection to `/streamz`.
#[derive(Debug)]
pub struct RawSocket {
    stream: TcpStream,
    /// The codec negotiated at the handshake.
    pub codec: Codec,
    mask: u32,
}

/// The answer to a handshake that was refused.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// The whole response head and body read.
    pub response: String,
}

impl RawSocket {
    /// Connects to `addr` and upgrades with `token` (CBOR subprotocol if `cbor`).
    pub fn connect(addr: SocketAddr, token: &str, cbor: bool) -> Result<Self, Refused> {
        let mut stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        let protocol = if cbor { "Sec-WebSocket-Protocol: streamkit.v1.cbor\r\n" } else { "" };
        let request = format!(
            "GET /streamz HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: http://localhost\r\nAuthorization: Bearer {token}\r\n{protocol}\r\n"
        );
        stream.write_all(request.as_bytes()).expect("write handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 101 {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            return Err(Refused { status, response: text + &String::from_utf8_lossy(&rest) });
        }
        let codec = if text.to_ascii_lowercase().contains("sec-websocket-protocol: streamkit.v1.cbor") {
            Codec::Cbor
        } else {
            Codec::Json
        };
        Ok(Self { stream, codec, mask: 0x1234_5678 })
    }

    /// Makes writes fail after `timeout` instead of blocking while the server does not read.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        self.stream.set_write_timeout(timeout).expect("write timeout");
    }

    /// Sends one WebSocket frame with `opcode` and `payload` (FIN set, masked).
    pub fn send_raw(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.mask = self.mask.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let key = self.mask.to_be_bytes();
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&frame)
    }

    /// Writes `bytes` to the socket as they are (a hand-made frame header, say).
    pub fn send_raw_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads and drops every message that arrives within `wait`; false if the server closed the
    /// connection meanwhile.
    pub fn poll_open(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.recv() {
                Ok(Received::Message(_)) => {}
                Ok(Received::Closed) => return false,
                Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    break;
                }
                Err(_) => return false,
            }
        }
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(30)));
        true
    }

    /// Sends a text frame.
    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_raw(TEXT, text.as_bytes())
    }

    /// Sends a binary frame.
    pub fn send_binary(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.send_raw(BINARY, bytes)
    }

    /// Sends a frame the way the negotiated codec does (text for JSON, binary for CBOR).
    pub fn send_frame(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.codec.is_binary() { self.send_binary(bytes) } else { self.send_raw(TEXT, bytes) }
    }

    /// Sends a data frame opening (or continuing) `channel` on `store` with the inner message `payload`.
    pub fn send_data(&mut self, store: Uuid, channel: Uuid, payload: Vec<u8>) -> io::Result<()> {
        let bytes = self.codec.encode_frame(&Frame::data(store, channel, payload));
        self.send_frame(&bytes)
    }

    /// The next message (pings are answered and skipped); `Closed` when the server closed.
    pub fn recv(&mut self) -> io::Result<Received> {
        loop {
            let mut head = [0u8; 2];
            if let Err(error) = self.stream.read_exact(&mut head) {
                return match error.kind() {
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Ok(Received::Closed),
                    _ => Err(error),
                };
            }
            let opcode = head[0] & 0x0F;
            let mut len = u64::from(head[1] & 0x7F);
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b)?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b)?;
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
            self.stream.read_exact(&mut payload)?;
            match opcode {
                TEXT | BINARY => return Ok(Received::Message(payload)),
                CLOSE => return Ok(Received::Closed),
                PING => self.send_raw(PONG, &payload)?,
                _ => {}
            }
        }
    }

    /// The next message, decoded as a frame of the negotiated codec.
    pub fn recv_frame(&mut self) -> io::Result<Option<Frame>> {
        match self.recv()? {
            Received::Message(bytes) => {
                let frame = self.codec.decode_frame(&bytes, &Limits::default()).map_err(io::Error::other)?;
                Ok(Some(frame))
            }
            Received::Closed => Ok(None),
        }
    }

    /// The next frame of `channel` (frames of other channels and heartbeats are skipped); `None` if the
    /// connection closed first.
    pub fn recv_on(&mut self, channel: Uuid) -> io::Result<Option<Frame>> {
        loop {
            match self.recv_frame()? {
                Some(frame) if frame.channel_id == channel => return Ok(Some(frame)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// Reads until the server closes the connection (at most `patience`); returns the frames received
    /// before, or an error if the connection is still open after `patience`.
    pub fn expect_closed(&mut self, patience: Duration) -> io::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + patience;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connection still open"));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.recv() {
                Ok(Received::Message(bytes)) => frames.push(bytes),
                Ok(Received::Closed) => return Ok(frames),
                Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "connection still open"));
                }
                // A reset or broken pipe is a close too.
                Err(_) => return Ok(frames),
            }
        }
    }

    /// Sends a WebSocket close frame.
    pub fn close(&mut self) {
        let _ = self.send_raw(CLOSE, &[0x03, 0xE8]);
    }
}

/// Standard padded base64 (the JSON frame's `payload`).
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A JSON data frame written by hand, with `payload` already a JSON value (a base64 string, `null`, or
/// anything hostile).
pub fn json_frame(control: &str, store: Uuid, channel: Uuid, payload_json: &str) -> String {
    format!(
        "{{\"ControlType\":\"{control}\",\"store_id\":\"{store}\",\"channel_id\":\"{channel}\",\"payload\":{payload_json}}}"
    )
}

/// A JSON data frame carrying the inner JSON text `inner`.
pub fn json_data(store: Uuid, channel: Uuid, inner: &str) -> String {
    json_frame("data", store, channel, &format!("\"{}\"", base64(inner.as_bytes())))
}

/// Whether `frame` is a `close` control frame (connection-wide shutdown).
pub fn is_close_frame(codec: Codec, bytes: &[u8]) -> bool {
    codec.decode_frame(bytes, &Limits::default()).is_ok_and(|frame| frame.control == ControlType::Close)
}
