//! Runs a test case, written once as `async fn(Arc<dyn Runtime>)`, on each runtime, and the
//! [`per_runtime!`] macro (defined in `main.rs`) that generates the `#[test]` wrappers.
#![allow(dead_code)] // a build without some runtime feature uses only part of it

use std::future::Future;
use std::sync::Arc;

use streamkit::runtime::Runtime;

#[cfg(feature = "tokio")]
pub fn run_tokio<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let handle = runtime.handle().clone();
    runtime.block_on(case(Arc::new(streamkit::runtime::TokioRuntime::new(handle))));
}

#[cfg(feature = "smol")]
pub fn run_smol<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()>,
{
    smol::block_on(case(Arc::new(streamkit::runtime::SmolRuntime::new())));
}

#[cfg(feature = "async-std")]
#[allow(deprecated)]
pub fn run_async_std<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()>,
{
    async_std::task::block_on(case(Arc::new(streamkit::runtime::AsyncStdRuntime::new())));
}
