//! The async-io timer shared by the smol and async-std runtimes (both run on async-io's reactor).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::Timer;

use super::AsyncTimer;

impl AsyncTimer for Timer {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        self.get_mut().set_at(deadline);
    }

    fn poll_elapsed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Future::poll(self, cx).map(|_| ())
    }
}

/// A boxed async-io timer for `deadline`.
pub(super) fn timer_at(deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
    Box::pin(Timer::at(deadline))
}
