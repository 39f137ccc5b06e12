//! [`Client::follow_segment`] and [`Client::follow_space`]: every entry after a cursor, then each new
//! one as it is committed, across lost connections.

use std::pin::Pin;

use futures_core::Stream;
use futures_util::{FutureExt, StreamExt};
use streamkit_proto::api::{ConsumeSegment, ConsumeSpace, Entry, SegmentStatus};
use uuid::Uuid;

use super::{Client, EntryStream, Result, StatusStream, SubscribeOptions};
use crate::runtime::RuntimeExt;

/// The entries of [`Client::follow_segment`] and [`Client::follow_space`]; it ends only with an error
/// that retrying cannot fix, or when dropped.
pub type FollowStream = Pin<Box<dyn Stream<Item = Result<Entry>> + Send>>;

/// What a follow reads, and how far it got.
enum Position {
    /// A segment, after the sequence of the last entry handed out.
    Segment { segment: String, after: u64 },
    /// A space: the read that resumes after the last entry handed out (its space offset; before the
    /// first entry, the caller's start).
    Space { after: ConsumeSpace },
}

impl Position {
    /// Whether `status` says there may be entries past the position.
    fn is_behind(&self, status: &SegmentStatus) -> bool {
        match self {
            Position::Segment { after, .. } => status.last_sequence > *after,
            // A space's statuses do not compare with an offset: any change may be news.
            Position::Space { .. } => true,
        }
    }

    /// Moves the position past `entry`.
    fn advance(&mut self, entry: &Entry) {
        match self {
            Position::Segment { after, .. } => *after = entry.sequence,
            Position::Space { after } => {
                after.offset = entry.space_offset();
                // The offset bounds the read from now on.
                after.min_timestamp = 0;
            }
        }
    }
}

/// Where a follow stands.
struct Follow {
    client: Client,
    store: Uuid,
    space: String,
    position: Position,
    /// Statuses of the segment or space: what tells that there is more to read.
    subscription: Option<StatusStream>,
    /// The read in progress, from the position on.
    reading: Option<EntryStream>,
    /// A status past the position arrived (or the subscription is new): read again.
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
        let position = Position::Segment { segment: segment.into(), after };
        self.follow(store, space.into(), position)
    }

    /// Follows a space: its entries (every segment, in timestamp order) from where `start` says, then
    /// each new one as it is committed, each once; like [`follow_segment`](Self::follow_segment) it
    /// survives lost connections. `start` is a space read: `ConsumeSpace::new(space)` for everything,
    /// `.after(cursor)` to resume after an entry's [`space_offset`](Entry::space_offset),
    /// `.after_timestamp(millis)` for what was committed after a time; its `limit` and
    /// `until_timestamp` are not used.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::StreamExt;
    /// use streamkit::ConsumeSpace;
    ///
    /// client.append(store, "orders", "order-1", "created", Default::default()).await?;
    /// let mut entries = client.follow_space(store, ConsumeSpace::new("orders"));
    /// assert_eq!(entries.next().await.ok_or("ended")??.segment, "order-1");
    /// client.append(store, "orders", "order-2", "created", Default::default()).await?;
    /// assert_eq!(entries.next().await.ok_or("ended")??.segment, "order-2");
    /// # Ok(()) }
    /// ```
    pub fn follow_space(&self, store: Uuid, start: ConsumeSpace) -> FollowStream {
        let start = ConsumeSpace { limit: 0, max_timestamp: 0, ..start };
        self.follow(store, start.space.clone(), Position::Space { after: start })
    }

    fn follow(&self, store: Uuid, space: String, position: Position) -> FollowStream {
        let follow = Follow {
            client: self.clone(),
            store,
            space,
            position,
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
            let space = self.space.clone();
            let subscription = match &self.position {
                Position::Segment { segment, .. } => {
                    self.client.subscribe_segment(self.store, space, segment, options).await?
                }
                Position::Space { .. } => self.client.subscribe_space(self.store, space, options).await?,
            };
            self.subscription = Some(subscription);
            self.behind = true;
        }
        if let Some(reading) = &mut self.reading {
            return match reading.next().await {
                Some(Ok(entry)) => {
                    // A read from the position yields every later entry in order; anything else is the
                    // server's bug, and skipping or repeating would break the promise to the caller.
                    self.position.advance(&entry);
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
            self.reading = Some(match &self.position {
                Position::Segment { segment, after } => {
                    let request =
                        ConsumeSegment::new(self.space.clone(), segment.clone()).from_sequence(after + 1);
                    self.client.consume_segment(self.store, request)
                }
                Position::Space { after } => self.client.consume_space(self.store, after.clone()),
            });
            return Ok(None);
        }
        let Some(subscription) = &mut self.subscription else { return Ok(None) };
        match subscription.next().await {
            Some(Ok(status)) => {
                self.failures = 0;
                self.behind = self.position.is_behind(&status);
                // A burst of statuses (a snapshot, a busy space) makes one read, not one per status.
                while let Some(next) = subscription.next().now_or_never() {
                    match next {
                        Some(Ok(status)) => self.behind |= self.position.is_behind(&status),
                        Some(Err(error)) => return Err(error),
                        None => return Err(super::Error::muxer_closed()),
                    }
                }
                Ok(None)
            }
            Some(Err(error)) => Err(error),
            // The server ended the subscription (it is shutting down, say): subscribe again.
            None => Err(super::Error::muxer_closed()),
        }
    }
}
