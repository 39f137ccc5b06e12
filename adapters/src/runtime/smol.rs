//! [`Runtime`] on smol.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use smol::Executor;
use smol::net::{TcpListener, TcpStream};

use super::async_io_timer::timer_at;
use super::{AsyncTimer, BoxFuture, BoxedStream, Listener, Runtime};

/// The smol runtime: smol's global executor, or an executor the application drives itself.
///
/// IO and timers use async-io's reactor, which runs on its own thread when nobody drives it, so this
/// runtime works from any thread. Blocking work goes to smol's `blocking` thread pool.
#[derive(Clone, Debug, Default)]
pub struct SmolRuntime {
    executor: Option<Arc<Executor<'static>>>,
}

impl SmolRuntime {
    /// Spawns on smol's global executor (`smol::spawn`; its thread count follows `SMOL_THREADS`).
    pub fn new() -> Self {
        Self { executor: None }
    }

    /// Spawns on `executor`; the application must run it (e.g. `executor.run(...)` on some threads).
    pub fn with_executor(executor: Arc<Executor<'static>>) -> Self {
        Self { executor: Some(executor) }
    }
}

impl Runtime for SmolRuntime {
    fn name(&self) -> &'static str {
        "smol"
    }

    fn spawn_detached(&self, future: BoxFuture<'static, ()>) {
        // A dropped smol task is cancelled, so detach explicitly.
        match &self.executor {
            Some(executor) => executor.spawn(future).detach(),
            None => smol::spawn(future).detach(),
        }
    }

    fn spawn_blocking_detached(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        smol::unblock(work).detach();
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        timer_at(deadline)
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
        listener.set_nonblocking(true)?;
        Ok(Box::new(SmolListener { inner: TcpListener::try_from(listener)? }))
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
struct SmolListener {
    inner: TcpListener,
}

impl Listener for SmolListener {
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
