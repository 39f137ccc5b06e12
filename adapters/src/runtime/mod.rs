//! Async runtime abstraction: the server and the client run on whichever runtime the application uses.
//!
//! Runtimes are **additive** Cargo features (`tokio`, `smol`, `async-std`); several may be compiled in at
//! once and the one to use is chosen at construction by passing an `Arc<dyn Runtime>` (quinn's design:
//! Cargo features cannot be mutually exclusive, so the choice is a value, not a feature).
//!
//! | feature | type | notes |
//! |---|---|---|
//! | `tokio` (default) | `TokioRuntime` | bound to a `tokio::runtime::Handle`; the runtime must have IO and time enabled |
//! | `smol` | `SmolRuntime` | global smol executor or one supplied by the application; **recommended non-tokio runtime** |
//! | `async-std` | `AsyncStdRuntime` | **deprecated**: async-std is discontinued upstream (RUSTSEC-2025-0052); use `smol` |
//!
//! The [`Runtime`] trait is object safe and small: detached spawning, blocking work, timers and TCP.
//! Everything generic (typed join handles, timeouts, sleeping) lives in [`RuntimeExt`], implemented once
//! on top of it, so every runtime behaves the same way: a [`JoinHandle`] **detaches on drop** (tokio's
//! convention, also under smol where a dropped task would otherwise be cancelled), can be awaited for
//! the task's output, and can [`abort`](JoinHandle::abort) the task. A panic inside a task is caught
//! and reported as [`JoinError::Panicked`] instead of tearing down a runtime thread.
//!
//! Streams are `futures-io` streams ([`AsyncStream`]), the common currency of async-tungstenite on
//! every runtime; tokio sockets are adapted with `async_tungstenite::tokio::TokioAdapter`.

#[cfg(any(feature = "smol", feature = "async-std"))]
mod async_io_timer;
#[cfg(feature = "async-std")]
mod async_std;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "async-std")]
#[allow(deprecated)]
pub use self::async_std::AsyncStdRuntime;
#[cfg(feature = "smol")]
pub use self::smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use self::tokio::TokioRuntime;

use std::any::Any;
use std::fmt::{self, Debug};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Either, abortable, select};

/// A boxed, `Send` future: what the object-safe [`Runtime`] trait accepts and returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream usable by the WebSocket layer on every runtime.
///
/// Blanket-implemented for every `futures-io` stream that is `Unpin + Send + 'static`; TLS streams or
/// in-memory pipes qualify as well as TCP sockets.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

/// A type-erased [`AsyncStream`]: one concrete stream type for every runtime and transport.
pub type BoxedStream = Box<dyn AsyncStream>;

/// A resettable timer (quinn's `AsyncTimer`): re-arming it for the next deadline of a state machine's
/// `poll_timeout` costs no allocation.
///
/// Timers may fire late and, on tokio, may even report `Pending` for an elapsed deadline when the task
/// is out of cooperative budget; drivers must compare [`Runtime::now`] with the deadline rather than
/// trusting the timer alone.
pub trait AsyncTimer: Send + Debug {
    /// Re-arms the timer for `deadline` (which may be in the past: the timer is then ready at once).
    fn reset(self: Pin<&mut Self>, deadline: Instant);
    /// Ready once the deadline has passed.
    fn poll_elapsed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}

impl Future for dyn AsyncTimer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_elapsed(cx)
    }
}

/// A bound TCP listener of some runtime.
pub trait Listener: Send + Sync + Debug {
    /// Accepts the next connection; `TCP_NODELAY` is set on it, since the WebSocket layer batches
    /// its own writes and Nagle would only add latency to each flush.
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxedStream, SocketAddr)>>;
    /// The address the listener is bound to (useful after binding port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// An async runtime, as the adapters need it (object safe; see the module docs).
pub trait Runtime: Send + Sync + Debug + 'static {
    /// A short name for logs ("tokio", "smol", "async-std").
    fn name(&self) -> &'static str;

    /// Runs `future` to completion in the background. Nothing is returned: typed, awaitable and
    /// abortable handles are built on top by [`RuntimeExt::spawn`].
    fn spawn_detached(&self, future: BoxFuture<'static, ()>);

    /// Runs blocking work (file system, CPU-heavy encoding, a synchronous database) on a thread pool
    /// where it cannot stall the async executor. [`RuntimeExt::spawn_blocking`] returns its output.
    fn spawn_blocking_detached(&self, work: Box<dyn FnOnce() + Send + 'static>);

    /// A timer that fires at `deadline`.
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>>;

    /// Registers a bound std listener with this runtime's reactor (it is switched to non-blocking).
    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn Listener>>;

    /// Opens a TCP connection to `addr` (with `TCP_NODELAY`, like [`Listener::accept`]).
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxedStream>>;

    /// The current time as this runtime sees it; overridden by runtimes with a virtual test clock.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Generic conveniences over any [`Runtime`], including `dyn Runtime`.
pub trait RuntimeExt: Runtime {
    /// Spawns `future` and returns a handle to await its output, detach or abort it.
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // Catching the unwind keeps a panicking task from killing a runtime worker and lets the
        // awaiting side see what happened; the abort wrapper gives every runtime the same `abort`.
        let (task, abort) = abortable(AssertUnwindSafe(future).catch_unwind());
        self.spawn_detached(Box::pin(async move {
            if let Ok(result) = task.await {
                // The receiver may be gone (a detached handle): the output is simply dropped.
                let _ = tx.send(result);
            }
        }));
        JoinHandle { rx, abort: Some(abort) }
    }

    /// Runs `work` on the blocking pool and returns a handle to its output. [`JoinHandle::abort`]
    /// cannot interrupt a closure that already runs; it only stops waiting for it.
    fn spawn_blocking<F, T>(&self, work: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.spawn_blocking_detached(Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
        }));
        JoinHandle { rx, abort: None }
    }

    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        self.new_timer(deadline)
    }

    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn AsyncTimer>> {
        self.new_timer(deadline_after(self.now(), duration))
    }

    /// Runs `future` until `deadline`; [`Elapsed`] if the deadline came first (the future is dropped).
    fn timeout_at<F: Future>(&self, deadline: Instant, future: F) -> Timeout<F> {
        Timeout { future: Box::pin(future), timer: self.new_timer(deadline) }
    }

    /// Runs `future` for at most `duration`.
    fn timeout<F: Future>(&self, duration: Duration, future: F) -> Timeout<F> {
        self.timeout_at(deadline_after(self.now(), duration), future)
    }

    /// Binds a TCP listener on `addr` and registers it with this runtime.
    fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        // std's bind sets SO_REUSEADDR on Unix, so a restarted server can rebind at once.
        self.listen(std::net::TcpListener::bind(addr)?)
    }
}

impl<R: Runtime + ?Sized> RuntimeExt for R {}

/// `now + duration`, saturating far in the future instead of panicking on overflow.
fn deadline_after(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// The future of [`RuntimeExt::timeout`].
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    timer: Pin<Box<dyn AsyncTimer>>,
}

impl<F> Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout").field("timer", &self.timer).finish_non_exhaustive()
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The inner future is polled first: work that is ready wins over a deadline that is ready.
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match self.timer.as_mut().poll_elapsed(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A deadline passed before the future completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Why a task produced no output.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The task panicked; the message is the panic payload when it was a string.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task was aborted, or its runtime shut down before it finished.
    #[error("task cancelled")]
    Cancelled,
}

impl JoinError {
    fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        let message = match payload.downcast::<String>() {
            Ok(text) => *text,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(text) => (*text).to_owned(),
                Err(_) => "non-string panic payload".to_owned(),
            },
        };
        Self::Panicked(message)
    }
}

/// A handle to a spawned task: await it for the output, [`detach`](Self::detach) it (also what
/// dropping does), or [`abort`](Self::abort) it.
#[must_use = "dropping a JoinHandle detaches the task; call `detach()` to say so"]
pub struct JoinHandle<T> {
    rx: oneshot::Receiver<std::thread::Result<T>>,
    abort: Option<AbortHandle>,
}

impl<T> Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").field("abortable", &self.abort.is_some()).finish_non_exhaustive()
    }
}

impl<T> JoinHandle<T> {
    /// Lets the task run on without anyone waiting for it.
    pub fn detach(self) {}

    /// Stops the task at its next suspension point; awaiting the handle then yields
    /// [`JoinError::Cancelled`] (unless the task had already finished). Blocking work cannot be
    /// interrupted: for it this only stops waiting.
    pub fn abort(&self) {
        if let Some(abort) = &self.abort {
            abort.abort();
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.rx.poll_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(output))) => Poll::Ready(Ok(output)),
            Poll::Ready(Ok(Err(panic))) => Poll::Ready(Err(JoinError::from_panic(panic))),
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(JoinError::Cancelled)),
        }
    }
}

/// Runs `future` until `shutdown` completes, whichever is first; `None` when shutdown won.
pub async fn until<F, S>(future: F, shutdown: S) -> Option<F::Output>
where
    F: Future,
    S: Future,
{
    let future = std::pin::pin!(future);
    let shutdown = std::pin::pin!(shutdown);
    match select(future, shutdown).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// The runtime to use when the application did not choose one, like quinn's `default_runtime`:
/// tokio when called inside a tokio runtime, else smol, else async-std (deprecated), among the
/// runtimes compiled in. `None` when none applies (only tokio compiled in, called outside tokio).
pub fn default_runtime() -> Option<Arc<dyn Runtime>> {
    #[cfg(feature = "tokio")]
    if let Some(runtime) = TokioRuntime::try_current() {
        return Some(Arc::new(runtime));
    }
    #[cfg(feature = "smol")]
    {
        Some(Arc::new(SmolRuntime::new()))
    }
    #[cfg(all(feature = "async-std", not(feature = "smol")))]
    {
        #[allow(deprecated)]
        Some(Arc::new(AsyncStdRuntime::new()))
    }
    #[cfg(not(any(feature = "smol", feature = "async-std")))]
    {
        None
    }
}
