//! [`Runtime`] on tokio.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_tungstenite::tokio::TokioAdapter;
use tokio::runtime::Handle;
use tokio::time::Sleep;

use super::{AsyncTimer, BoxFuture, BoxedStream, Listener, Runtime};

/// The tokio runtime behind a [`Handle`].
///
/// The runtime must have IO and time enabled (`Builder::enable_all`, or `#[tokio::main]`). Because every
/// operation enters the handle first, the futures and timers it returns also work when polled from
/// outside tokio's own threads.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: Handle,
}

impl TokioRuntime {
    /// Runs on the runtime behind `handle`.
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    /// The runtime the caller runs in, if it runs inside tokio.
    pub fn try_current() -> Option<Self> {
        Handle::try_current().ok().map(Self::new)
    }

    /// The handle this runtime spawns on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Runtime for TokioRuntime {
    fn name(&self) -> &'static str {
        "tokio"
    }

    fn spawn_detached(&self, future: BoxFuture<'static, ()>) {
        // Dropping a tokio JoinHandle detaches the task.
        drop(self.handle.spawn(future));
    }

    fn spawn_blocking_detached(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        drop(self.handle.spawn_blocking(work));
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        // Creating a `Sleep` needs the time driver of the current runtime context.
        let _context = self.handle.enter();
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        listener.set_nonblocking(true)?;
        // `from_std` registers with the reactor of the current context and panics outside one.
        let _context = self.handle.enter();
        let inner = tokio::net::TcpListener::from_std(listener)?;
        Ok(Box::new(TokioListener { inner }))
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>> {
        Box::pin(InContext {
            handle: self.handle.clone(),
            future: Box::pin(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                // Best effort: a failure here costs latency, not correctness.
                let _ = stream.set_nodelay(true);
                Ok(Box::new(TokioAdapter::new(stream)) as BoxedStream)
            }),
        })
    }

    fn now(&self) -> Instant {
        // tokio's clock, so a paused test clock (`tokio::time::pause`) applies.
        let _context = self.handle.enter();
        tokio::time::Instant::now().into_std()
    }
}

impl AsyncTimer for Sleep {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        Sleep::reset(self, deadline.into());
    }

    fn poll_elapsed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Future::poll(self, cx)
    }
}

/// Polls a future with a tokio runtime entered, so tokio resources it creates find their reactor
/// even when the caller polls it from another executor.
struct InContext<F> {
    handle: Handle,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _context = self.handle.enter();
        self.future.as_mut().poll(cx)
    }
}

#[derive(Debug)]
struct TokioListener {
    inner: tokio::net::TcpListener,
}

impl Listener for TokioListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxedStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.inner.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(TokioAdapter::new(stream)) as BoxedStream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
