//! Reading an HTTP/1.1 request head from a socket, bounded in size (the caller bounds the time).

use futures_io::AsyncRead;
use futures_util::AsyncReadExt;

/// At most this many header lines; more is answered 431 like an oversized head.
const MAX_HEADERS: usize = 64;

/// A parsed request head, owning its data so the read buffer can be handed on.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// HTTP minor version (`1` for HTTP/1.1).
    pub minor_version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// Every header (name as sent, value), in request order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The head of a `GET /streamz` HTTP/1.1 request another HTTP stack already read: its headers.
    pub fn upgrade_request<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        Self {
            method: "GET".to_owned(),
            path: super::STREAMZ_PATH.to_owned(),
            minor_version: 1,
            headers: headers.into_iter().map(|(name, value)| (name.to_owned(), value.to_vec())).collect(),
        }
    }

    /// Every value of header `name` (case-insensitive), in request order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The value of header `name` when it appears exactly once.
    pub fn single_header<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        let mut values = self.header_values(name);
        let first = values.next()?;
        values.next().is_none().then_some(first)
    }

    /// Whether some value of header `name`, as a comma-separated list, holds `token`
    /// (case-insensitive), e.g. `Connection: keep-alive, Upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name).any(|value| {
            value.split(|&b| b == b',').any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// Why no request head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The peer closed or failed before sending a complete head; nothing to answer.
    Disconnected,
    /// Not HTTP.
    Malformed,
    /// Over the size or header-count limit.
    TooLarge,
}

/// Reads until a complete request head is buffered, at most `max_bytes` of head. Returns the head and
/// the bytes read after it (a client may send WebSocket frames right behind its upgrade request).
pub(crate) async fn read_head<S>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<(RequestHead, Vec<u8>), HeadError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    // Nothing allocated until bytes arrive: an idle connection costs only its (fixed-size) task.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Disconnected)?;
        if n == 0 {
            return Err(HeadError::Disconnected);
        }
        // Parse only when the new bytes may end the head: re-parsing on every read would make a
        // client that trickles one byte at a time cost quadratic CPU.
        let scan_from = buf.len().saturating_sub(2);
        buf.extend_from_slice(&chunk[..n]);
        if ends_head(&buf[scan_from..]) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    if len > max_bytes {
                        return Err(HeadError::TooLarge);
                    }
                    let head = RequestHead {
                        method: request.method.unwrap_or_default().to_owned(),
                        path: request
                            .path
                            .unwrap_or_default()
                            .split('?')
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                        minor_version: request.version.unwrap_or_default(),
                        headers: request
                            .headers
                            .iter()
                            .map(|h| (h.name.to_owned(), h.value.to_vec()))
                            .collect(),
                    };
                    return Ok((head, buf.split_off(len)));
                }
                // A blank line the parser does not take as the end (leading CRLFs): read on.
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
                Err(_) => return Err(HeadError::Malformed),
            }
        }
        if buf.len() > max_bytes {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Whether `window` contains an empty line: `\n\r\n` or `\n\n` (httparse accepts bare LF endings).
fn ends_head(window: &[u8]) -> bool {
    window.windows(2).any(|w| w == b"\n\n") || window.windows(3).any(|w| w == b"\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;
    use std::future::Future;

    /// Serves `data` one byte per read, the worst case for the end-of-head detection.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = usize::from(!self.0.is_empty() && !buf.is_empty());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(n))
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("in-memory reads never pend")
    }

    #[test]
    fn parses_head_and_keeps_the_rest() {
        let data = b"GET /streamz?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\n\x81\x00";
        let (head, rest) = block_on(read_head(&mut Cursor::new(&data[..]), 1024)).unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/streamz");
        assert_eq!(head.minor_version, 1);
        assert!(head.has_token("connection", "upgrade"));
        assert_eq!(head.single_header("HOST"), Some(&b"a"[..]));
        assert_eq!(rest, b"\x81\x00");
        let (head, rest) = block_on(read_head(&mut Trickle(data), 1024)).unwrap();
        assert_eq!(head.path, "/streamz");
        assert!(rest.is_empty());
    }

    #[test]
    fn bare_lf_heads_are_accepted() {
        let (head, _) =
            block_on(read_head(&mut Trickle(b"GET /healthz HTTP/1.1\nHost: a\n\n"), 1024)).unwrap();
        assert_eq!(head.path, "/healthz");
    }

    #[test]
    fn limits_and_garbage() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(5000));
        assert!(matches!(
            block_on(read_head(&mut Cursor::new(big.as_bytes()), 1024)),
            Err(HeadError::TooLarge)
        ));
        let endless = "a".repeat(5000);
        assert!(matches!(
            block_on(read_head(&mut Trickle(endless.as_bytes()), 1024)),
            Err(HeadError::TooLarge)
        ));
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            block_on(read_head(&mut Cursor::new(many.as_bytes()), 65536)),
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            block_on(read_head(&mut Cursor::new(&b"\x16\x03\x01\x00\n\n"[..]), 1024)),
            Err(HeadError::Malformed)
        ));
        assert!(matches!(
            block_on(read_head(&mut Cursor::new(&b"GET / HTTP/1.1\r\n"[..]), 1024)),
            Err(HeadError::Disconnected)
        ));
    }
}
