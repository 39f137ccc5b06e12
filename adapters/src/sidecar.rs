//! The dedicated tokio runtime the PostgreSQL and NATS drivers run on.
//!
//! tokio-postgres, deadpool-postgres and async-nats need a tokio reactor and timers; the server and the
//! client run on whichever runtime the application chose (tokio, smol, async-std). Rather than asking
//! every application for a tokio runtime, or wrapping each driver future in a compatibility layer, the
//! drivers run on a small tokio runtime of their own (two worker threads named `streamkit-io`), started
//! on first use and kept for the life of the process. Work crosses over through
//! [`run`]: the future is spawned there and its output comes back through a `futures-channel` oneshot,
//! which any executor can await. The cost is one cross-thread hand-off per database or bus operation
//! (microseconds, against a network round trip) and two threads; the gain is that the same code path
//! serves every runtime, and database I/O never competes with the server's connection tasks.

use std::future::Future;
use std::sync::OnceLock;

use futures_channel::oneshot;

/// Worker threads of the runtime: the drivers only wait on sockets, so two are plenty.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// The runtime's handle, starting it on first use; an error if its threads could not be started.
pub(crate) fn handle() -> Result<tokio::runtime::Handle, String> {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("streamkit-io")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the database/bus I/O runtime: {e}"))
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(e) => Err(e.clone()),
    }
}

/// Runs `future` on the I/O runtime; the returned future (awaitable from any executor) resolves to its
/// output, or to an error if the runtime is unavailable or the task panicked.
pub(crate) fn run<F, T>(future: F) -> impl Future<Output = Result<T, String>> + Send + 'static
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let spawned = handle().map(|handle| {
        handle.spawn(async move {
            // The caller may have stopped waiting: the output is then dropped.
            let _ = tx.send(future.await);
        })
    });
    async move {
        spawned?;
        rx.await.map_err(|_| "the database/bus I/O task stopped before answering".to_owned())
    }
}

/// Spawns `future` on the I/O runtime without waiting for it (background loops); an error if the
/// runtime is unavailable.
#[cfg(any(feature = "postgres", feature = "jwks-url"))]
pub(crate) fn spawn<F>(future: F) -> Result<tokio::task::JoinHandle<()>, String>
where
    F: Future<Output = ()> + Send + 'static,
{
    Ok(handle()?.spawn(future))
}

/// Blocks the calling thread until `future` completes (for synchronous callers such as
/// [`OrderedKv`](streamkit_proto::storage::OrderedKv) implementations). Never call it from a thread of
/// an async executor.
#[cfg(any(feature = "postgres", test))]
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_run_on_the_io_runtime_and_answer_any_caller() {
        let name = block_on(run(async { std::thread::current().name().map(str::to_owned) })).unwrap();
        assert_eq!(name.as_deref(), Some("streamkit-io"));
        let panicked = block_on(run(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
        }));
        assert!(panicked.unwrap_err().contains("stopped before answering"));
    }
}
