//! The server's reader of WebSocket frames (RFC 6455 without extensions), in place of tungstenite's.
//!
//! Why not tungstenite's read half: it allocates its read buffer when the connection is upgraded and
//! keeps it for the connection's life, and after a large frame the buffer keeps that frame's size (a
//! connection that once sent a 1 MB record kept about 3 MB). On a server holding thousands of
//! connections of many tenants, that memory is neither bounded by the connection's budget nor given
//! back. This reader:
//!
//! * reads the socket into a buffer of [`READ_CHUNK`] bytes that is allocated when input arrives and
//!   freed as soon as a read finds the socket empty, so an idle connection holds no read buffer;
//! * reads a frame of [`LARGE_FRAME`] bytes or more that is not already buffered straight into a
//!   buffer of exactly its size, which is handed out as the message: nothing is copied and nothing of
//!   it stays behind when the message is dropped;
//! * answers what tungstenite answered: a ping leaves its pong for the writer ([`FrameReader::take_pong`]),
//!   a close frame ends the input and leaves its echo ([`FrameReader::take_close_reply`]), and every violation (unmasked
//!   frame, reserved bits or opcodes, a fragmented or oversized control frame, a continuation out of
//!   place, invalid UTF-8 in a text message, a frame or message over its cap) is a
//!   [`tungstenite::Error`] with tungstenite's own text.
//!
//! Writing stays with tungstenite: it has no such buffer to keep.

use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::{CloseFrame, FrameHeader, Utf8Bytes};
use async_tungstenite::tungstenite::{self, protocol::WebSocketConfig};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::AsyncRead;

/// Bytes taken from the socket per read system call into the shared buffer.
pub const READ_CHUNK: usize = 16 * 1024;

/// A frame at least this large that is not already in the buffer is read into a buffer of its own.
pub const LARGE_FRAME: usize = READ_CHUNK;

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Reads data messages from a client's socket; see the module documentation.
pub struct FrameReader<R> {
    socket: R,
    /// Bytes read from the socket and not yet parsed; no allocation while the socket is idle.
    buffer: BytesMut,
    /// The frame whose header was parsed and whose payload is not complete yet.
    frame: Option<PartialFrame>,
    /// The fragments so far of a data message sent in several frames.
    message: Option<PartialMessage>,
    /// The payload of the last ping not answered yet.
    pong: Option<Bytes>,
    /// The close frame to send back after the peer's (its code and reason echoed), not sent yet.
    close_reply: Option<Option<CloseFrame>>,
    max_frame: usize,
    max_message: usize,
    /// A close frame arrived, the socket ended or failed: nothing more is read.
    ended: bool,
}

struct PartialFrame {
    is_final: bool,
    opcode: OpCode,
    mask: [u8; 4],
    len: usize,
    /// For a large frame: its own buffer of `len` bytes, filled up to `filled`.
    own: Option<(BytesMut, usize)>,
}

struct PartialMessage {
    text: bool,
    data: BytesMut,
    /// For text: how much of `data` is known to be valid UTF-8 (a sequence cut by a fragment
    /// boundary waits for the next fragment).
    valid: usize,
}

impl PartialMessage {
    /// Checks the text received since the last check, so that invalid UTF-8 fails the connection at
    /// the fragment that carries it, as tungstenite does, and no byte is checked twice. Before the last
    /// fragment, a sequence cut at the end waits for the next one.
    fn check_text(&mut self, last: bool) -> Result<(), tungstenite::Error> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.valid..]) {
            Ok(_) => self.valid = self.data.len(),
            Err(error) if !last && error.error_len().is_none() => self.valid += error.valid_up_to(),
            Err(error) => return Err(tungstenite::Error::Utf8(error.to_string())),
        }
        Ok(())
    }

    /// The whole message, once its last fragment arrived.
    fn finish(mut self) -> Result<Bytes, tungstenite::Error> {
        self.check_text(true)?;
        Ok(self.data.freeze())
    }
}

/// A complete frame: opcode, fin bit and unmasked payload.
struct CompleteFrame {
    is_final: bool,
    opcode: OpCode,
    payload: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `socket`; `leftover` is what the handshake read past the request head. The
    /// caps are `config`'s `max_frame_size` and `max_message_size` (none: unbounded).
    pub fn new(socket: R, leftover: Vec<u8>, config: &WebSocketConfig) -> Self {
        Self {
            socket,
            buffer: BytesMut::from(&leftover[..]),
            frame: None,
            message: None,
            pong: None,
            close_reply: None,
            max_frame: config.max_frame_size.unwrap_or(usize::MAX),
            max_message: config.max_message_size.unwrap_or(usize::MAX),
            ended: false,
        }
    }

    /// The payload of a ping to answer with a pong, if one arrived since the last call.
    pub fn take_pong(&mut self) -> Option<Bytes> {
        self.pong.take()
    }

    /// The close frame that answers the peer's close, once (`Some(None)`: a close without a code).
    pub fn take_close_reply(&mut self) -> Option<Option<CloseFrame>> {
        self.close_reply.take()
    }

    /// Whether a pong or a close reply is waiting to be sent.
    pub fn owes_answer(&self) -> bool {
        self.pong.is_some() || self.close_reply.is_some()
    }

    /// The next data message's payload (text or binary); `Ok(None)` once the peer sent its close
    /// frame. A socket that ends without one is an error (`ResetWithoutClosingHandshake`, as from
    /// tungstenite). After an error or the end, nothing more is read.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, tungstenite::Error>> {
        while !self.ended {
            let frame = match self.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => {
                    // The socket ended without a close frame: tungstenite's error for it.
                    self.end();
                    return Poll::Ready(Err(protocol(ProtocolError::ResetWithoutClosingHandshake)));
                }
                Poll::Ready(Err(error)) => {
                    self.end();
                    return Poll::Ready(Err(error));
                }
            };
            match self.handle(frame) {
                Ok(Some(message)) => return Poll::Ready(Ok(Some(message))),
                Ok(None) => {}
                Err(error) => {
                    self.end();
                    return Poll::Ready(Err(error));
                }
            }
        }
        self.end();
        Poll::Ready(Ok(None))
    }

    /// Stops reading and lets go of every buffer.
    fn end(&mut self) {
        self.ended = true;
        self.buffer = BytesMut::new();
        self.frame = None;
        self.message = None;
    }

    /// What a complete frame means: a message to hand out, nothing yet (a fragment, a control frame),
    /// or a violation. A close frame ends the input.
    fn handle(&mut self, frame: CompleteFrame) -> Result<Option<Bytes>, tungstenite::Error> {
        let CompleteFrame { is_final, opcode, payload } = frame;
        match opcode {
            OpCode::Control(Control::Ping) => {
                self.pong = Some(payload.freeze());
                Ok(None)
            }
            OpCode::Control(Control::Pong) => Ok(None),
            OpCode::Control(Control::Close) => {
                self.ended = true;
                self.close_reply = Some(close_reply(payload.freeze())?);
                Ok(None)
            }
            OpCode::Control(Control::Reserved(code)) => {
                Err(protocol(ProtocolError::UnknownControlFrameType(code)))
            }
            OpCode::Data(Data::Reserved(code)) => Err(protocol(ProtocolError::UnknownDataFrameType(code))),
            OpCode::Data(Data::Continue) => {
                let Some(mut message) = self.message.take() else {
                    return Err(protocol(ProtocolError::UnexpectedContinueFrame));
                };
                let size = message.data.len().saturating_add(payload.len());
                if size > self.max_message {
                    return Err(too_long(size, self.max_message));
                }
                message.data.extend_from_slice(&payload);
                if is_final {
                    return message.finish().map(Some);
                }
                message.check_text(false)?;
                self.message = Some(message);
                Ok(None)
            }
            OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                if let Some(message) = &self.message {
                    let expected = if message.text { Data::Text } else { Data::Binary };
                    return Err(protocol(ProtocolError::ExpectedFragment(expected)));
                }
                let text = data == Data::Text;
                if payload.len() > self.max_message {
                    return Err(too_long(payload.len(), self.max_message));
                }
                let mut message = PartialMessage { text, data: payload, valid: 0 };
                if is_final {
                    return message.finish().map(Some);
                }
                message.check_text(false)?;
                self.message = Some(message);
                Ok(None)
            }
        }
    }

    /// The next complete frame, unmasked; `Ok(None)` when the socket ended.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<CompleteFrame>, tungstenite::Error>> {
        loop {
            if self.frame.is_none() {
                self.frame = self.parse_header()?;
            }
            let complete = match &mut self.frame {
                // The header is not all there yet.
                None => false,
                // A large frame reads straight into its own buffer.
                Some(PartialFrame { len, own: Some((body, filled)), .. }) => {
                    if *filled == *len {
                        true
                    } else {
                        match ready!(Pin::new(&mut self.socket).poll_read(cx, &mut body[*filled..]))? {
                            0 => return Poll::Ready(Ok(None)),
                            read => *filled += read,
                        }
                        continue;
                    }
                }
                Some(frame) => self.buffer.len() >= frame.len,
            };
            if !complete {
                if !ready!(self.poll_fill(cx))? {
                    return Poll::Ready(Ok(None));
                }
                continue;
            }
            let Some(PartialFrame { is_final, opcode, mask, len, own }) = self.frame.take() else { continue };
            let mut payload = match own {
                Some((body, _)) => body,
                None => self.buffer.split_to(len),
            };
            unmask(&mut payload, mask);
            return Poll::Ready(Ok(Some(CompleteFrame { is_final, opcode, payload })));
        }
    }

    /// Parses the header at the front of the buffer, if it is all there, and checks it.
    fn parse_header(&mut self) -> Result<Option<PartialFrame>, tungstenite::Error> {
        let mut cursor = Cursor::new(&self.buffer[..]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor)? else { return Ok(None) };
        let header_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(protocol(ProtocolError::NonZeroReservedBits));
        }
        let Some(mask) = header.mask else {
            return Err(protocol(ProtocolError::UnmaskedFrameFromClient));
        };
        if let OpCode::Control(_) = header.opcode {
            if !header.is_final {
                return Err(protocol(ProtocolError::FragmentedControlFrame));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(protocol(ProtocolError::ControlFrameTooBig));
            }
        }
        let len = match usize::try_from(len) {
            Ok(len) if len <= self.max_frame => len,
            _ => return Err(too_long(usize::try_from(len).unwrap_or(usize::MAX), self.max_frame)),
        };
        self.buffer.advance(header_len);
        let own = (len >= LARGE_FRAME && self.buffer.len() < len).then(|| {
            let mut body = BytesMut::zeroed(len);
            let buffered = self.buffer.len();
            body[..buffered].copy_from_slice(&self.buffer);
            // Everything buffered was this frame's; the rest of it goes straight into `body`.
            self.buffer = BytesMut::new();
            (body, buffered)
        });
        Ok(Some(PartialFrame { is_final: header.is_final, opcode: header.opcode, mask, len, own }))
    }

    /// Reads more of the socket into the buffer: `Ok(true)` when bytes arrived, `Ok(false)` at the
    /// end of input. A read that finds the socket empty frees an empty buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let start = self.buffer.len();
        if self.buffer.capacity() - start < READ_CHUNK / 4 {
            // The buffer's own allocation is reused once every message handed out of it is gone.
            self.buffer.reserve(READ_CHUNK);
        }
        let end = self.buffer.capacity();
        self.buffer.resize(end, 0);
        let result = Pin::new(&mut self.socket).poll_read(cx, &mut self.buffer[start..]);
        let read = match &result {
            Poll::Ready(Ok(read)) => *read,
            _ => 0,
        };
        self.buffer.truncate(start + read);
        if read == 0 && self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        }
        result.map_ok(|read| read > 0)
    }

    /// Whether a read buffer is held (for tests).
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buffer.capacity() > 0
    }
}

/// What answers a peer's close frame, as tungstenite answers it: the same code and reason, or a
/// protocol-error close when the code is not one a peer may send.
fn close_reply(payload: Bytes) -> Result<Option<CloseFrame>, tungstenite::Error> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(protocol(ProtocolError::InvalidCloseSequence)),
        _ => {
            let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
            let reason = Utf8Bytes::try_from(payload.slice(2..))?;
            Ok(Some(if code.is_allowed() {
                CloseFrame { code, reason }
            } else {
                CloseFrame { code: CloseCode::Protocol, reason: Utf8Bytes::from_static("Protocol violation") }
            }))
        }
    }
}

fn protocol(error: ProtocolError) -> tungstenite::Error {
    tungstenite::Error::Protocol(error)
}

fn too_long(size: usize, max_size: usize) -> tungstenite::Error {
    tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size })
}

/// Removes a client's mask (RFC 6455 §5.3): eight bytes at a time, then the rest.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let (words, rest) = data.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // The words covered a multiple of 8 bytes, so the rest starts at mask byte 0.
    for (byte, key) in rest.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::task::Waker;

    use proptest::prelude::*;

    use super::*;

    /// A socket that yields its scripted reads in order: `Some(bytes)` is data (handed out in pieces
    /// of at most `piece` bytes), `None` is "nothing to read yet"; after the script, end of input.
    struct Scripted {
        reads: VecDeque<Option<Vec<u8>>>,
        piece: usize,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let piece = self.piece;
            match self.reads.front_mut() {
                None => Poll::Ready(Ok(0)),
                Some(None) => {
                    self.reads.pop_front();
                    Poll::Pending
                }
                Some(Some(data)) => {
                    let taken = data.len().min(out.len()).min(piece);
                    out[..taken].copy_from_slice(&data[..taken]);
                    data.drain(..taken);
                    if data.is_empty() {
                        self.reads.pop_front();
                    }
                    Poll::Ready(Ok(taken))
                }
            }
        }
    }

    /// One client frame: fin bit, opcode (RFC 6455 numbering), masked with a fixed key.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
        out
    }

    const TEXT: u8 = 1;
    const BINARY: u8 = 2;
    const CONTINUE: u8 = 0;
    const CLOSE: u8 = 8;
    const PING: u8 = 9;

    fn reader(reads: Vec<Option<Vec<u8>>>, piece: usize) -> FrameReader<Scripted> {
        let config = WebSocketConfig::default().max_frame_size(Some(1 << 20)).max_message_size(Some(1 << 20));
        FrameReader::new(Scripted { reads: reads.into(), piece }, Vec::new(), &config)
    }

    fn poll(reader: &mut FrameReader<Scripted>) -> Poll<Result<Option<Bytes>, tungstenite::Error>> {
        reader.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    fn message(reader: &mut FrameReader<Scripted>) -> Vec<u8> {
        match poll(reader) {
            Poll::Ready(Ok(Some(message))) => message.to_vec(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn error(reader: &mut FrameReader<Scripted>) -> String {
        match poll(reader) {
            Poll::Ready(Err(error)) => error.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn messages_arrive_whole_however_the_socket_cuts_them_and_an_idle_reader_holds_no_buffer() {
        let large: Vec<u8> = (0..LARGE_FRAME * 3 + 5).map(|i| (i % 251) as u8).collect();
        let mut bytes = frame(true, TEXT, b"{\"a\":1}");
        bytes.extend(frame(true, BINARY, &large));
        bytes.extend(frame(false, TEXT, b"frag"));
        bytes.extend(frame(true, PING, b"are you there"));
        bytes.extend(frame(false, CONTINUE, b"ment"));
        bytes.extend(frame(true, CONTINUE, b"ed"));
        bytes.extend(frame(true, BINARY, b""));
        for piece in [1, 2, 3, 7, 100, 4096, usize::MAX] {
            let mut reader =
                reader(vec![Some(bytes.clone()), None, Some(frame(true, CLOSE, b"\x03\xe8"))], piece);
            assert!(!reader.holds_buffer(), "nothing allocated before input");
            assert_eq!(message(&mut reader), b"{\"a\":1}");
            assert_eq!(message(&mut reader), large, "piece {piece}");
            assert_eq!(message(&mut reader), b"fragmented");
            assert_eq!(reader.take_pong().as_deref(), Some(&b"are you there"[..]));
            assert_eq!(message(&mut reader), b"");
            assert!(poll(&mut reader).is_pending());
            assert!(!reader.holds_buffer(), "an idle reader holds no buffer (piece {piece})");
            assert!(matches!(poll(&mut reader), Poll::Ready(Ok(None))), "a close frame ends the input");
            let reply = reader.take_close_reply().expect("a close is answered").expect("with its code");
            assert_eq!(reply.code, CloseCode::Normal);
            assert!(matches!(poll(&mut reader), Poll::Ready(Ok(None))), "and it stays ended");
        }
    }

    #[test]
    fn a_large_frame_is_read_into_a_buffer_of_its_own_that_leaves_with_the_message() {
        let large = vec![9u8; LARGE_FRAME * 4];
        let encoded = frame(true, BINARY, &large);
        let mut reader =
            reader(vec![Some(encoded[..100].to_vec()), None, Some(encoded[100..].to_vec())], usize::MAX);
        assert!(poll(&mut reader).is_pending());
        assert!(!reader.holds_buffer(), "the frame's start went into the frame's own buffer");
        let got = message(&mut reader);
        assert_eq!(got, large);
        assert!(!reader.holds_buffer(), "nothing of the large frame stays in the reader");
    }

    #[test]
    fn a_socket_that_ends_without_a_close_frame_is_an_error() {
        let mut bytes = frame(true, TEXT, b"last");
        bytes.extend(&frame(true, TEXT, b"cut short")[..5]);
        let mut reader = reader(vec![Some(bytes)], usize::MAX);
        assert_eq!(message(&mut reader), b"last");
        assert!(error(&mut reader).contains("without closing handshake"));
        assert!(matches!(poll(&mut reader), Poll::Ready(Ok(None))), "and nothing more is read");
    }

    #[test]
    fn protocol_violations_end_the_input_with_tungstenite_s_texts() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (unmasked, "unmasked"),
            (
                {
                    let mut f = frame(true, TEXT, b"x");
                    f[0] |= 0x40;
                    f
                },
                "Reserved bits are non-zero",
            ),
            (frame(true, 3, b"x"), "invalid opcode: 3"),
            (frame(true, 11, b"x"), "invalid opcode: 11"),
            (frame(false, PING, b"x"), "Fragmented control frame"),
            (frame(true, PING, &[0; 126]), "Control frame too big"),
            (frame(true, CONTINUE, b"x"), "Continue frame but nothing to continue"),
            (
                [frame(false, TEXT, b"a"), frame(true, BINARY, b"b")].concat(),
                "While waiting for more fragments",
            ),
            (frame(true, TEXT, &[0xff, 0xfe]), "UTF-8"),
            (frame(true, CLOSE, &[3]), "Invalid close sequence"),
            (frame(true, BINARY, &vec![0; (1 << 20) + 1]), "Message too long"),
            (
                [frame(false, BINARY, &vec![0; 1 << 19]), frame(true, CONTINUE, &vec![0; (1 << 19) + 1])]
                    .concat(),
                "Message too long",
            ),
        ];
        for (bytes, text) in cases {
            let mut reader = reader(vec![Some(bytes), Some(frame(true, TEXT, b"after"))], usize::MAX);
            let error = error(&mut reader);
            assert!(error.contains(text), "{error:?} should say {text:?}");
            assert!(matches!(poll(&mut reader), Poll::Ready(Ok(None))), "nothing is read after an error");
            assert!(!reader.holds_buffer());
        }
    }

    #[test]
    fn a_close_is_echoed_and_a_forbidden_code_answered_with_a_protocol_error() {
        let mut r = reader(vec![Some(frame(true, CLOSE, b"\x0f\xa0going"))], usize::MAX);
        assert!(matches!(poll(&mut r), Poll::Ready(Ok(None))));
        let reply = r.take_close_reply().unwrap().unwrap();
        assert_eq!((reply.code, reply.reason.as_str()), (CloseCode::from(4000), "going"));
        assert!(!r.owes_answer(), "answered once");
        let mut r = reader(vec![Some(frame(true, CLOSE, b"\x03\xed"))], usize::MAX);
        assert!(matches!(poll(&mut r), Poll::Ready(Ok(None))));
        assert_eq!(r.take_close_reply().unwrap().unwrap().code, CloseCode::Protocol, "1005 is not sent");
        let mut r = reader(vec![Some(frame(true, CLOSE, b""))], usize::MAX);
        assert!(matches!(poll(&mut r), Poll::Ready(Ok(None))));
        assert_eq!(r.take_close_reply(), Some(None));
    }

    #[test]
    fn bytes_read_with_the_handshake_come_first() {
        let encoded = frame(true, TEXT, b"early");
        let config = WebSocketConfig::default();
        let socket =
            Scripted { reads: VecDeque::from([Some(frame(true, TEXT, b"late"))]), piece: usize::MAX };
        let mut reader = FrameReader::new(socket, encoded, &config);
        assert_eq!(message(&mut reader), b"early");
        assert_eq!(message(&mut reader), b"late");
    }

    #[test]
    fn unmask_matches_the_bytewise_definition_at_every_length() {
        let mask = [1, 2, 3, 250];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }

    /// What a reader made of a byte stream: its data messages, then how it ended.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        messages: Vec<Vec<u8>>,
        /// `true`: a close frame; `false`: an error (a violation, or the socket ending first).
        clean_end: bool,
    }

    /// tungstenite's server-side reader over the same bytes: the reference.
    fn tungstenite_reads(bytes: &[u8], config: WebSocketConfig) -> Outcome {
        use async_tungstenite::tungstenite::protocol::Role;
        use async_tungstenite::tungstenite::{Message, WebSocket};

        struct Socket(Cursor<Vec<u8>>);
        impl io::Read for Socket {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                self.0.read(out)
            }
        }
        impl io::Write for Socket {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut ws =
            WebSocket::from_raw_socket(Socket(Cursor::new(bytes.to_vec())), Role::Server, Some(config));
        let mut messages = Vec::new();
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => messages.push(text.as_bytes().to_vec()),
                Ok(Message::Binary(data)) => messages.push(data.to_vec()),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return Outcome { messages, clean_end: true },
                Err(_) => return Outcome { messages, clean_end: false },
            }
        }
    }

    fn frame_reader_reads(bytes: &[u8], piece: usize, config: &WebSocketConfig) -> Outcome {
        let socket = Scripted { reads: VecDeque::from([Some(bytes.to_vec())]), piece };
        let mut reader = FrameReader::new(socket, Vec::new(), config);
        let mut messages = Vec::new();
        loop {
            match poll(&mut reader) {
                Poll::Ready(Ok(Some(message))) => messages.push(message.to_vec()),
                Poll::Ready(Ok(None)) => return Outcome { messages, clean_end: true },
                Poll::Ready(Err(_)) => return Outcome { messages, clean_end: false },
                Poll::Pending => panic!("a scripted socket never blocks"),
            }
        }
    }

    /// One frame of a generated stream: mostly well formed, sometimes not.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        let opcode = prop_oneof![
            6 => Just(TEXT), 6 => Just(BINARY), 4 => Just(CONTINUE), 2 => Just(PING), 1 => Just(10u8),
            1 => Just(CLOSE), 1 => Just(3u8),
        ];
        let payload = prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..40),
            4 => "[a-zé€😀]{0,30}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 120..130),
            1 => (LARGE_FRAME - 10..LARGE_FRAME + 3000).prop_map(|len| vec![b'a'; len]),
        ];
        (any::<bool>(), opcode, payload, 0..40u8).prop_map(|(fin, opcode, payload, damage)| {
            let mut bytes = frame(fin || opcode >= 8, opcode, &payload);
            match damage {
                0 => bytes[1] &= 0x7f, // unmasked (the mask key then reads as payload)
                1 => bytes[0] |= 0x20, // a reserved bit
                2 => bytes.truncate(bytes.len() / 2),
                _ => {}
            }
            bytes
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the bytes and however the socket cuts them, the frame reader hands out the same
        /// messages as tungstenite and ends the same way (a clean close or an error).
        #[test]
        fn reads_like_tungstenite(
            frames in proptest::collection::vec(any_frame(), 0..12),
            close in any::<bool>(),
            piece in prop_oneof![Just(1usize), 1..64usize, Just(usize::MAX)],
        ) {
            let mut bytes = frames.concat();
            if close {
                bytes.extend(frame(true, CLOSE, b"\x03\xe8bye"));
            }
            let config = WebSocketConfig::default().max_frame_size(Some(20_000)).max_message_size(Some(30_000));
            let expected = tungstenite_reads(&bytes, config);
            prop_assert_eq!(frame_reader_reads(&bytes, piece, &config), expected);
        }
    }
}
