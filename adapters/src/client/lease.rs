//! [`Client::with_lease`]: run a future while holding a lease (PROTOCOL.md §4.9, §6.7, §7.2).

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures_util::future::{Either, select};
use streamkit_proto::api::{LeaseAcquire, LeaseRelease, LeaseRenew, Request};
use uuid::Uuid;

use super::error::{Error, ErrorKind, LEASE_LOST, LEASE_NOT_ACQUIRED};
use super::{Client, Result};
use crate::runtime::RuntimeExt;

/// How long releasing a lease may take once the guarded future is done (Go: 10 s).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The lease a [`Client::with_lease`] future runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease key.
    pub key: String,
    /// This holder's identity (a fresh random UUID per `with_lease` call).
    pub holder: String,
    /// The lease's time to live, in whole seconds.
    pub ttl: Duration,
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
    /// `ttl` is rounded to whole seconds, at least 1 s (the server accepts up to 86 400 s).
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
        let key = key.into();
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
        let work = f(Lease { key: key.clone(), holder: holder.clone(), ttl });
        let renew = async {
            loop {
                self.inner.runtime.sleep(renew_every).await;
                let request =
                    Request::LeaseRenew(LeaseRenew { key: key.clone(), holder: holder.clone(), ttl_seconds });
                match self.lease_call(store, request).await {
                    Ok(result) if result.ok => {}
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(%key, %error, "lease renewal failed; retrying at the next tick")
                    }
                }
            }
        };
        let outcome = match select(pin!(work), pin!(renew)).await {
            Either::Left((output, _)) => Ok(output),
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
