//! A socket whose read buffer exists only while input is arriving.
//!
//! tungstenite allocates its read buffer when a connection is upgraded and keeps it for the
//! connection's life, so every idle connection would pay for the largest read the server wants to
//! make. The server instead gives tungstenite a small buffer (its chunk size,
//! [`SERVER_READ_BUFFER`](super::SERVER_READ_BUFFER)) and puts [`IdleReleasingStream`] under it:
//! socket reads still take up to [`READ_CHUNK`] bytes per system call, into a buffer allocated when
//! the socket has data and freed as soon as a read finds the socket empty. An idle connection holds
//! no read buffer of its own here; a busy one reads in large chunks as before, and tungstenite copies
//! them out in small pieces (a memory copy, not a system call).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{AsyncRead, AsyncWrite};

/// Bytes taken from the socket per read system call.
pub const READ_CHUNK: usize = 16 * 1024;

/// Wraps a socket; see the module documentation. Writes pass straight through.
pub struct IdleReleasingStream<S> {
    inner: S,
    /// Bytes read from the socket and not yet handed out: `buffer[start..end]`. `None` while the
    /// socket has nothing to read.
    buffer: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl<S> IdleReleasingStream<S> {
    /// Wraps `inner`; nothing is allocated until it has data.
    pub fn new(inner: S) -> Self {
        Self { inner, buffer: None, start: 0, end: 0 }
    }

    /// Whether a read buffer is held (for tests).
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buffer.is_some()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleReleasingStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.start == this.end {
            // A caller asking for a whole chunk or more gets it straight from the socket.
            if out.len() >= READ_CHUNK {
                this.buffer = None;
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let buffer = this.buffer.get_or_insert_with(|| vec![0; READ_CHUNK].into_boxed_slice());
            match Pin::new(&mut this.inner).poll_read(cx, buffer) {
                Poll::Ready(Ok(read)) if read > 0 => (this.start, this.end) = (0, read),
                other => {
                    // Nothing to read (idle), the end of input or an error: the buffer goes.
                    this.buffer = None;
                    return other;
                }
            }
        }
        let Some(buffer) = this.buffer.as_deref() else {
            // start < end implies a buffer; never reached.
            return Poll::Ready(Ok(0));
        };
        let available = &buffer[this.start..this.end];
        let taken = available.len().min(out.len());
        out[..taken].copy_from_slice(&available[..taken]);
        this.start += taken;
        if this.start == this.end {
            // Drained: keep the buffer for the next read (more input is likely while the peer is
            // busy); the read that finds the socket empty frees it.
            (this.start, this.end) = (0, 0);
        }
        Poll::Ready(Ok(taken))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleReleasingStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use std::task::Waker;

    use super::*;

    /// A socket that yields its scripted reads in order: `Some(bytes)` is data, `None` is "nothing
    /// to read yet"; after the script, end of input.
    struct Scripted(VecDeque<Option<Vec<u8>>>);

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match self.0.front_mut() {
                None => Poll::Ready(Ok(0)),
                Some(None) => {
                    self.0.pop_front();
                    Poll::Pending
                }
                Some(Some(data)) => {
                    let taken = data.len().min(out.len());
                    out[..taken].copy_from_slice(&data[..taken]);
                    data.drain(..taken);
                    if data.is_empty() {
                        self.0.pop_front();
                    }
                    Poll::Ready(Ok(taken))
                }
            }
        }
    }

    fn read(stream: &mut IdleReleasingStream<Scripted>, len: usize) -> Poll<io::Result<Vec<u8>>> {
        let mut out = vec![0; len];
        Pin::new(stream).poll_read(&mut Context::from_waker(Waker::noop()), &mut out).map_ok(|n| {
            out.truncate(n);
            out
        })
    }

    fn ready(poll: Poll<io::Result<Vec<u8>>>) -> Vec<u8> {
        match poll {
            Poll::Ready(Ok(data)) => data,
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn small_reads_are_served_from_one_socket_read_and_the_buffer_goes_when_the_socket_is_empty() {
        let data: Vec<u8> = (0..=255).cycle().take(3000).collect();
        let script = VecDeque::from([Some(data.clone()), None, Some(b"later".to_vec())]);
        let mut stream = IdleReleasingStream::new(Scripted(script));
        assert!(!stream.holds_buffer(), "nothing is allocated before input arrives");
        let mut got = Vec::new();
        while got.len() < data.len() {
            got.extend(ready(read(&mut stream, 1024)));
            assert!(stream.holds_buffer());
        }
        assert_eq!(got, data, "every byte, in order");
        assert!(stream.inner.0.front().is_some_and(Option::is_none), "one socket read served them all");
        assert!(read(&mut stream, 1024).is_pending());
        assert!(!stream.holds_buffer(), "an idle socket holds no buffer");
        assert_eq!(ready(read(&mut stream, 1024)), b"later");
        assert_eq!(ready(read(&mut stream, 1024)), b"", "end of input");
        assert!(!stream.holds_buffer());
    }

    #[test]
    fn a_read_of_a_whole_chunk_or_more_goes_straight_to_the_socket() {
        let data = vec![7u8; READ_CHUNK + 10];
        let mut stream = IdleReleasingStream::new(Scripted(VecDeque::from([Some(data.clone())])));
        assert_eq!(ready(read(&mut stream, READ_CHUNK + 10)), data);
        assert!(!stream.holds_buffer());
    }

    #[test]
    fn reads_larger_than_what_is_buffered_take_what_is_there() {
        let script = VecDeque::from([Some(vec![1; 100]), Some(vec![2; 100])]);
        let mut stream = IdleReleasingStream::new(Scripted(script));
        assert_eq!(ready(read(&mut stream, 60)), vec![1; 60]);
        assert_eq!(ready(read(&mut stream, 1000)), vec![1; 40], "the rest of the first socket read");
        assert_eq!(ready(read(&mut stream, 1000)), vec![2; 100]);
    }
}
