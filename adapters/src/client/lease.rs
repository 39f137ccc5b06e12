//! [`Client::with_lease`]: run a future while holding a lease (PROTOCOL.md §4.9, §6.7, §7.2).

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_util::FutureExt;
use futures_util::future::{Either, Shared, select};
use streamkit_proto::api::{LeaseAcquire, LeaseRelease, LeaseRenew, Request};
use uuid::Uuid;

use super::error::{Error, ErrorKind, LEASE_LOST, LEASE_NOT_ACQUIRED};
use super::{Client, Result};
use crate::runtime::RuntimeExt;

/// How long releasing a lease may take once the guarded future is done (Go: 10 s).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The lease a [`Client::with_lease`] (or [`Client::with_lease_cooperative`]) future runs under.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The lease key.
    pub key: String,
    /// This holder's identity (a fresh random UUID per `with_lease` call).
    pub holder: String,
    /// The lease's time to live, in whole seconds.
    pub ttl: Duration,
    /// Completes when this holder no longer holds the lease.
    ended: Shared<oneshot::Receiver<()>>,
}

impl Lease {
    /// Completes once this holder no longer holds the lease: a renewal was refused (the lease expired or
    /// another holder took it), no renewal succeeded for a whole TTL (the server let it expire), or it
    /// was released. Guarded work run by [`Client::with_lease_cooperative`] waits on this (or polls
    /// [`is_lost`](Self::is_lost)) to stop on its own terms.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.ended.clone().map(|_| ())
    }

    /// Whether [`lost`](Self::lost) has completed.
    pub fn is_lost(&self) -> bool {
        // `peek` only sees a result some poll already took; this polls once, without waiting.
        self.ended.clone().now_or_never().is_some()
    }
}

impl PartialEq for Lease {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, &self.holder, self.ttl) == (&other.key, &other.holder, other.ttl)
    }
}

impl Eq for Lease {}

/// What happens to the guarded work when the lease is lost.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnLoss {
    /// It is dropped and the call fails with `lease lost` ([`Client::with_lease`]).
    Drop,
    /// It is told ([`Lease::lost`]) and runs to its end ([`Client::with_lease_cooperative`]).
    Signal,
}

/// Releases the lease if the `with_lease` future is dropped before it could (the caller cancelled).
struct ReleaseOnDrop {
    client: Client,
    store: Uuid,
    key: String,
    holder: String,
    armed: bool,
}

impl ReleaseOnDrop {
    async fn release(mut self) {
        self.armed = false;
        let request =
            Request::LeaseRelease(LeaseRelease { key: self.key.clone(), holder: self.holder.clone() });
        let runtime = self.client.inner.runtime.clone();
        if runtime.timeout(RELEASE_TIMEOUT, self.client.lease_call(self.store, request)).await.is_err() {
            tracing::warn!(key = %self.key, "lease release timed out");
        }
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.client.clone();
        let request = Request::LeaseRelease(LeaseRelease {
            key: std::mem::take(&mut self.key),
            holder: std::mem::take(&mut self.holder),
        });
        let store = self.store;
        let runtime = client.inner.runtime.clone();
        runtime
            .spawn(async move {
                let runtime = client.inner.runtime.clone();
                let _ = runtime.timeout(RELEASE_TIMEOUT, client.lease_call(store, request)).await;
            })
            .detach();
    }
}

/// Whole seconds of a lease TTL: rounded to the nearest second, at least 1.
fn ttl_seconds(ttl: Duration) -> i64 {
    let rounded = (ttl.as_millis() + 500) / 1000;
    i64::try_from(rounded).unwrap_or(i64::MAX).max(1)
}

impl Client {
    /// Acquires the lease `key` on `store` for a fresh holder id, runs the future `f` returns while
    /// renewing the lease every `ttl / 2` (at least every second), and releases it when the future is
    /// done. Returns the future's output.
    ///
    /// * Not acquired (another holder has it, or a validation message): `lease not acquired[: <message>]`
    ///   ([`ErrorKind::LeaseNotAcquired`]), and `f` is not called.
    /// * A renewal answered `ok: false` (the lease expired or was taken): the future is **dropped**
    ///   (cancelled) and the call fails with `lease lost` ([`ErrorKind::LeaseLost`]). Renewal calls that
    ///   fail (connection lost) are logged and retried at the next tick.
    /// * Dropping the `with_lease` future releases the lease in the background.
    ///
    /// `ttl` is rounded to whole seconds, at least 1 s (the server accepts up to 86 400 s). When no
    /// renewal succeeds for a whole TTL (say the connection is down), the server has let the lease
    /// expire and another holder may have it: that is a loss too.
    ///
    /// Dropping is the safe default: the work stops at its next `.await`, whatever it was doing. Work
    /// that must stop at a point of its own choosing (finish writing a batch, roll back) uses
    /// [`with_lease_cooperative`](Self::with_lease_cooperative) instead, as Go's `WithLease` does with
    /// its context.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use std::time::Duration;
    ///
    /// let report = client
    ///     .with_lease(store, "nightly-report", Duration::from_secs(10), |_lease| async {
    ///         // Runs only while this client holds the lease; no other holder runs it meanwhile.
    ///         "report written"
    ///     })
    ///     .await?;
    /// assert_eq!(report, "report written");
    /// # Ok(()) }
    /// ```
    pub async fn with_lease<F, Fut, T>(
        &self,
        store: Uuid,
        key: impl Into<String>,
        ttl: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_leased(store, key.into(), ttl, OnLoss::Drop, f).await
    }

    /// Like [`with_lease`](Self::with_lease), but a lost lease does not drop the work: the
    /// [`Lease`] it gets is told ([`Lease::lost`] completes, [`Lease::is_lost`] turns true), renewals
    /// stop, and the call waits for the work to end and returns its output, the work's own error
    /// included (as Go's `WithLease` returns the function's error after cancelling its context). The
    /// work must watch the signal: until it does, it runs without the lease.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use std::time::Duration;
    ///
    /// let outcome: Result<u32, String> = client
    ///     .with_lease_cooperative(store, "compaction", Duration::from_secs(10), |lease| async move {
    ///         let mut batches = 0;
    ///         while batches < 3 {
    ///             if lease.is_lost() {
    ///                 return Err(format!("stopped after {batches} batches: lease lost"));
    ///             }
    ///             batches += 1; // one batch of work, finished before looking again
    ///         }
    ///         Ok(batches)
    ///     })
    ///     .await?;
    /// assert_eq!(outcome, Ok(3));
    /// # Ok(()) }
    /// ```
    pub async fn with_lease_cooperative<F, Fut, T>(
        &self,
        store: Uuid,
        key: impl Into<String>,
        ttl: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_leased(store, key.into(), ttl, OnLoss::Signal, f).await
    }

    /// Acquires the lease, runs the work while renewing it, and releases it (see
    /// [`with_lease`](Self::with_lease)); `on_loss` says what a loss does to the work.
    async fn run_leased<F, Fut, T>(
        &self,
        store: Uuid,
        key: String,
        ttl: Duration,
        on_loss: OnLoss,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let ttl_seconds = ttl_seconds(ttl);
        let holder = Uuid::new_v4().to_string();
        let acquire =
            Request::LeaseAcquire(LeaseAcquire { key: key.clone(), holder: holder.clone(), ttl_seconds });
        let result = self.lease_call(store, acquire).await?;
        if !result.ok {
            let text = if result.message.is_empty() {
                LEASE_NOT_ACQUIRED.to_owned()
            } else {
                format!("{LEASE_NOT_ACQUIRED}: {}", result.message)
            };
            return Err(Error::new(ErrorKind::LeaseNotAcquired, text));
        }
        let guard = ReleaseOnDrop {
            client: self.clone(),
            store,
            key: key.clone(),
            holder: holder.clone(),
            armed: true,
        };
        let ttl = Duration::from_secs(ttl_seconds.unsigned_abs());
        let renew_every = (ttl / 2).max(Duration::from_secs(1));
        // Dropping `end` (the lease released, or this call dropped) completes `Lease::lost` too.
        let (end, ended) = oneshot::channel();
        let work = f(Lease { key: key.clone(), holder: holder.clone(), ttl, ended: ended.shared() });
        let renew = async {
            let mut renewed_at = Instant::now();
            loop {
                self.inner.runtime.sleep(renew_every).await;
                let request =
                    Request::LeaseRenew(LeaseRenew { key: key.clone(), holder: holder.clone(), ttl_seconds });
                match self.lease_call(store, request).await {
                    Ok(result) if result.ok => renewed_at = Instant::now(),
                    Ok(_) => return,
                    Err(error) if renewed_at.elapsed() >= ttl => {
                        tracing::warn!(%key, %error, "lease renewal failed for a whole ttl; the lease is lost");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%key, %error, "lease renewal failed; retrying at the next tick")
                    }
                }
            }
        };
        let mut work = pin!(work);
        let outcome = match select(work.as_mut(), pin!(renew)).await {
            Either::Left((output, _)) => Ok(output),
            Either::Right(((), _)) if on_loss == OnLoss::Signal => {
                let _ = end.send(());
                Ok(work.await)
            }
            Either::Right(((), _)) => Err(Error::new(ErrorKind::LeaseLost, LEASE_LOST)),
        };
        guard.release().await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_whole_seconds_at_least_one() {
        assert_eq!(ttl_seconds(Duration::from_millis(10)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1499)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }
}
