//! [`Runtime`] on async-std (deprecated: async-std is discontinued upstream).
#![allow(deprecated)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use async_std::net::{TcpListener, TcpStream};

use super::async_io_timer::timer_at;
use super::{AsyncTimer, BoxFuture, BoxedStream, Listener, Runtime};

/// The async-std runtime.
///
/// **Deprecated**: async-std has been discontinued by its authors in favour of smol and is flagged
/// unmaintained by RustSec (RUSTSEC-2025-0052). It is kept so existing async-std applications can embed
/// streamkit; new code should use `SmolRuntime` (feature `smol`), which shares its reactor
/// (async-io) and behaves the same.
#[deprecated(note = "async-std is discontinued upstream (RUSTSEC-2025-0052); use SmolRuntime")]
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStdRuntime;

impl AsyncStdRuntime {
    /// async-std's global executor.
    pub fn new() -> Self {
        Self
    }
}

impl Runtime for AsyncStdRuntime {
    fn name(&self) -> &'static str {
        "async-std"
    }

    fn spawn_detached(&self, future: BoxFuture<'static, ()>) {
        // Dropping an async-std JoinHandle detaches the task.
        drop(async_std::task::spawn(future));
    }

    fn spawn_blocking_detached(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        drop(async_std::task::spawn_blocking(work));
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        timer_at(deadline)
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        listener.set_nonblocking(true)?;
        Ok(Box::new(AsyncStdListener { inner: TcpListener::from(listener) }))
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}

#[derive(Debug)]
struct AsyncStdListener {
    inner: TcpListener,
}

impl Listener for AsyncStdListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxedStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as BoxedStream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
