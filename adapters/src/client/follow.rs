//! [`Client::follow_segment`]: every entry of a segment after a cursor, then each new one as it is
//! committed, across lost connections.

use std::pin::Pin;

use futures_core::Stream;
use futures_util::StreamExt;
use streamkit_proto::api::{ConsumeSegment, Entry};
use uuid::Uuid;

use super::{Client, EntryStream, Result, StatusStream, SubscribeOptions};
use crate::runtime::RuntimeExt;

/// The entries of [`Client::follow_segment`]; it ends only with an error that retrying cannot fix, or
/// when dropped.
pub type FollowStream = Pin<Box<dyn Stream<Item = Result<Entry>> + Send>>;

/// Where a follow stands.
struct Follow {
    client: Client,
    store: Uuid,
    space: String,
    segment: String,
    /// The sequence of the last entry handed out.
    cursor: u64,
    /// Statuses of the segment: what tells that there is more to read.
    subscription: Option<StatusStream>,
    /// The read in progress, from `cursor + 1`.
    reading: Option<EntryStream>,
    /// A status past the cursor arrived (or the subscription is new): read again.
    behind: bool,
    /// Failures since the last sign of progress, for the client's retry policy.
    failures: u32,
}

impl Client {
    /// Follows a segment: its entries after sequence `after` (0: from the start), then each new one as
    /// it is committed, in order and each once. A lost connection is survived: the follow subscribes
    /// again and reads on from the last entry it handed out, retrying with the client's
    /// [`RetryPolicy`](super::RetryPolicy) for as many consecutive failures as it allows; an error it
    /// cannot retry (or one more failure) ends the stream with that error. Dropping the stream stops it.
    ///
    /// This is the subscription-then-read pattern done for you: the subscription is opened before each
    /// read, so nothing committed in between is missed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::StreamExt;
    ///
    /// client.append(store, "orders", "order-42", "created", Default::default()).await?;
    /// let mut entries = client.follow_segment(store, "orders", "order-42", 0);
    /// assert_eq!(entries.next().await.ok_or("ended")??.sequence, 1);
    /// client.append(store, "orders", "order-42", "paid", Default::default()).await?;
    /// assert_eq!(entries.next().await.ok_or("ended")??.sequence, 2); // as soon as it is committed
    /// # Ok(()) }
    /// ```
    pub fn follow_segment(
        &self,
        store: Uuid,
        space: impl Into<String>,
        segment: impl Into<String>,
        after: u64,
    ) -> FollowStream {
        let follow = Follow {
            client: self.clone(),
            store,
            space: space.into(),
            segment: segment.into(),
            cursor: after,
            subscription: None,
            reading: None,
            behind: true,
            failures: 0,
        };
        Box::pin(futures_util::stream::unfold(Some(follow), |follow| async move {
            let mut follow = follow?;
            match follow.next().await {
                Ok(entry) => Some((Ok(entry), Some(follow))),
                Err(error) => Some((Err(error), None)),
            }
        }))
    }
}

impl Follow {
    /// The next entry, resubscribing and reading again after transient failures.
    async fn next(&mut self) -> Result<Entry> {
        loop {
            let step = self.step().await;
            match step {
                Ok(Some(entry)) => return Ok(entry),
                Ok(None) => {}
                Err(error) => {
                    let policy = self.client.inner.retry;
                    self.failures += 1;
                    if !error.is_retryable() || self.failures >= policy.attempts {
                        return Err(error);
                    }
                    tracing::debug!(%error, failures = self.failures, "streamkit follow resumes");
                    // Start over from the cursor: subscribe again, then read.
                    self.subscription = None;
                    self.reading = None;
                    self.behind = true;
                    self.client.inner.runtime.sleep(policy.delay(self.failures - 1)).await;
                }
            }
        }
    }

    /// One step: an entry, nothing yet (`None`: call again), or a failure.
    async fn step(&mut self) -> Result<Option<Entry>> {
        if self.subscription.is_none() {
            let options = SubscribeOptions::default();
            let subscription =
                self.client.subscribe_segment(self.store, self.space.clone(), &self.segment, options).await?;
            self.subscription = Some(subscription);
            self.behind = true;
        }
        if let Some(reading) = &mut self.reading {
            return match reading.next().await {
                Some(Ok(entry)) => {
                    // A read from `cursor + 1` yields every later entry in order; anything else is the
                    // server's bug, and skipping or repeating would break the promise to the caller.
                    self.cursor = entry.sequence;
                    self.failures = 0;
                    Ok(Some(entry))
                }
                Some(Err(error)) => Err(error),
                None => {
                    self.reading = None;
                    Ok(None)
                }
            };
        }
        if self.behind {
            self.behind = false;
            let request = ConsumeSegment {
                space: self.space.clone(),
                segment: self.segment.clone(),
                min_sequence: self.cursor + 1,
                ..Default::default()
            };
            self.reading = Some(self.client.consume_segment(self.store, request));
            return Ok(None);
        }
        let Some(subscription) = &mut self.subscription else { return Ok(None) };
        match subscription.next().await {
            Some(Ok(status)) => {
                self.failures = 0;
                self.behind = status.last_sequence > self.cursor;
                Ok(None)
            }
            Some(Err(error)) => Err(error),
            // The server ended the subscription (it is shutting down, say): subscribe again.
            None => Err(super::Error::muxer_closed()),
        }
    }
}
