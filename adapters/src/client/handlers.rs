//! Callback-style subscriptions ([`Client::subscribe_space_with`], [`Client::subscribe_segment_with`])
//! and the client's registry of them ([`Client::subscriptions`], [`Client::unsubscribe`]), as Go's
//! provider has them.
//!
//! A subscription's statuses are read as they arrive, always: a slow handler never stops the reading,
//! so it never stalls the other streams of the connection. What the handlers have not taken yet waits
//! **coalesced per segment** (a newer status of a segment replaces the one waiting, since a status
//! says where the segment is now), at most [`HandlerOptions::max_pending`] segments (beyond, the
//! oldest waiting one is dropped and counted). Handlers run on tasks of their own, at most
//! [`HandlerOptions::concurrency`] at once and never two for the same segment (so each segment's
//! statuses reach the handler in order), each within [`HandlerOptions::timeout`]; a handler that fails,
//! times out or panics is counted and the subscription goes on. A lost connection is survived like
//! [`Client::follow_segment`] survives it: the subscription is opened again (its snapshot then brings
//! every segment's current status) with the client's retry policy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use streamkit_proto::api::SegmentStatus;
use uuid::Uuid;

use super::{Client, StatusStream, SubscribeOptions};
use crate::runtime::{JoinHandle, RuntimeExt};

/// How a callback-style subscription runs its handler (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerOptions {
    /// Handlers running at once (default 4; at least 1).
    pub concurrency: usize,
    /// How long one call of the handler may take (default 30 s); a call past it is cancelled and
    /// counted as an error.
    pub timeout: Duration,
    /// Segments whose newest status may wait for the handler (default 1024).
    pub max_pending: usize,
    /// The subscription's own options (server heartbeats).
    pub subscribe: SubscribeOptions,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            timeout: Duration::from_secs(30),
            max_pending: 1024,
            subscribe: SubscribeOptions::default(),
        }
    }
}

/// The id of a callback-style subscription in its client's registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(u64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscription-{}", self.0)
    }
}

/// Where a callback-style subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// Opening, or opening again after a lost connection.
    Connecting,
    /// Open: statuses arrive and reach the handler.
    Active,
    /// Over: the server ended it, or an error that is not retried ([`SubscriptionInfo::last_error`]).
    Ended,
}

/// What the registry knows of one subscription ([`Client::subscriptions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Its id.
    pub id: SubscriptionId,
    /// The store.
    pub store: Uuid,
    /// The space.
    pub space: String,
    /// The segment, or `"*"` for every segment of the space.
    pub segment: String,
    /// Where it stands.
    pub state: SubscriptionState,
    /// Handler calls that succeeded.
    pub deliveries: u64,
    /// When the last of them ended.
    pub last_delivery: Option<SystemTime>,
    /// Handler calls that failed, timed out or panicked, and subscription errors.
    pub errors: u64,
    /// The text of the last of those.
    pub last_error: Option<String>,
    /// Statuses dropped because [`HandlerOptions::max_pending`] segments were already waiting.
    pub dropped: u64,
}

/// The client's callback-style subscriptions.
#[derive(Default)]
pub(super) struct Registry {
    next_id: AtomicU64,
    entries: Mutex<HashMap<SubscriptionId, Entry>>,
}

struct Entry {
    info: SubscriptionInfo,
    /// `None` only while the task is being started.
    task: Option<JoinHandle<()>>,
}

impl Registry {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<SubscriptionId, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates the info of `id`, if it is still registered.
    fn update(&self, id: SubscriptionId, change: impl FnOnce(&mut SubscriptionInfo)) {
        if let Some(entry) = self.entries().get_mut(&id) {
            change(&mut entry.info);
        }
    }
}

/// A handler call's task, cancelled when this is dropped (on a timeout, or when its subscription
/// stops), so no call outlives its subscription.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = <JoinHandle<T> as Future>::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The last handle of a client is gone: its subscriptions stop (their tasks hold only a weak client,
/// but an idle subscription would not notice until its next status).
impl Drop for Registry {
    fn drop(&mut self) {
        for entry in self.entries().values() {
            if let Some(task) = &entry.task {
                task.abort();
            }
        }
    }
}

/// How one handler call ended.
enum Outcome {
    Delivered,
    Failed(String),
}

impl Client {
    /// Subscribes to every segment of a space and calls `handler` with each status (see the module
    /// docs for how it runs); returns the subscription's id in [`subscriptions`](Self::subscriptions).
    /// The handler's error type only needs `Display`: its text is kept as `last_error`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use streamkit::client::HandlerOptions;
    ///
    /// let (seen, mut seen_rx) = futures_channel::mpsc::unbounded();
    /// let id = client.subscribe_space_with(store, "orders", HandlerOptions::default(), move |status| {
    ///     let seen = seen.clone();
    ///     async move { seen.unbounded_send(status.segment).map_err(|e| e.to_string()) }
    /// });
    /// # while client.subscriptions()[0].state != streamkit::client::SubscriptionState::Active {
    /// #     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    /// # }
    /// client.append(store, "orders", "order-42", "created", Default::default()).await?;
    /// assert_eq!(futures_util::StreamExt::next(&mut seen_rx).await.as_deref(), Some("order-42"));
    /// assert!(client.unsubscribe(id));
    /// # Ok(()) }
    /// ```
    pub fn subscribe_space_with<H, Fut, E>(
        &self,
        store: Uuid,
        space: impl Into<String>,
        options: HandlerOptions,
        handler: H,
    ) -> SubscriptionId
    where
        H: Fn(SegmentStatus) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.subscribe_with(store, space.into(), "*".to_owned(), options, handler)
    }

    /// [`subscribe_space_with`](Self::subscribe_space_with) for one segment.
    pub fn subscribe_segment_with<H, Fut, E>(
        &self,
        store: Uuid,
        space: impl Into<String>,
        segment: impl Into<String>,
        options: HandlerOptions,
        handler: H,
    ) -> SubscriptionId
    where
        H: Fn(SegmentStatus) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.subscribe_with(store, space.into(), segment.into(), options, handler)
    }

    /// The callback-style subscriptions of this client (and its clones), by id.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        let mut infos: Vec<SubscriptionInfo> =
            self.inner.subscriptions.entries().values().map(|entry| entry.info.clone()).collect();
        infos.sort_by_key(|info| info.id);
        infos
    }

    /// Stops subscription `id` (its running handler calls are cancelled) and forgets it; `false` if
    /// there was none.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let removed = self.inner.subscriptions.entries().remove(&id);
        if let Some(task) = removed.as_ref().and_then(|entry| entry.task.as_ref()) {
            task.abort();
        }
        removed.is_some()
    }

    fn subscribe_with<H, Fut, E>(
        &self,
        store: Uuid,
        space: String,
        segment: String,
        options: HandlerOptions,
        handler: H,
    ) -> SubscriptionId
    where
        H: Fn(SegmentStatus) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let registry = &self.inner.subscriptions;
        let id = SubscriptionId(registry.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let info = SubscriptionInfo {
            id,
            store,
            space: space.clone(),
            segment: segment.clone(),
            state: SubscriptionState::Connecting,
            deliveries: 0,
            last_delivery: None,
            errors: 0,
            last_error: None,
            dropped: 0,
        };
        registry.entries().insert(id, Entry { info, task: None });
        // The task holds a weak client: a client dropped everywhere else ends its subscriptions.
        let run = run_subscription(
            Arc::downgrade(&self.inner),
            id,
            store,
            space,
            segment,
            options,
            Arc::new(handler),
        );
        let task = self.inner.runtime.spawn(run);
        if let Some(entry) = registry.entries().get_mut(&id) {
            entry.task = Some(task);
        } else {
            // Unsubscribed before it could start.
            task.abort();
        }
        id
    }
}

/// The statuses waiting for the handler: the newest per segment, oldest segment first.
#[derive(Default)]
struct Pending {
    statuses: HashMap<String, SegmentStatus>,
    order: VecDeque<String>,
}

impl Pending {
    /// Keeps `status` as its segment's newest; `true` if another segment's status had to be dropped.
    fn push(&mut self, status: SegmentStatus, max: usize) -> bool {
        if let Some(waiting) = self.statuses.get_mut(&status.segment) {
            *waiting = status;
            return false;
        }
        let mut dropped = false;
        while self.statuses.len() >= max.max(1) {
            let Some(oldest) = self.order.pop_front() else { break };
            self.statuses.remove(&oldest);
            dropped = true;
        }
        self.order.push_back(status.segment.clone());
        self.statuses.insert(status.segment.clone(), status);
        dropped
    }

    /// The oldest waiting status whose segment has no handler running.
    fn take(&mut self, busy: &HashSet<String>) -> Option<SegmentStatus> {
        let position = self.order.iter().position(|segment| !busy.contains(segment))?;
        let segment = self.order.remove(position)?;
        self.statuses.remove(&segment)
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_subscription<H, Fut, E>(
    client: std::sync::Weak<super::Inner>,
    id: SubscriptionId,
    store: Uuid,
    space: String,
    segment: String,
    options: HandlerOptions,
    handler: Arc<H>,
) where
    H: Fn(SegmentStatus) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let mut pending = Pending::default();
    let mut busy: HashSet<String> = HashSet::new();
    let mut running = FuturesUnordered::new();
    let mut failures = 0u32;
    loop {
        let Some(inner) = client.upgrade() else { return };
        let client_handle = Client { inner };
        let registry = &client_handle.inner.subscriptions;
        registry.update(id, |info| info.state = SubscriptionState::Connecting);
        let opened = client_handle.subscribe(store, space.clone(), segment.clone(), options.subscribe).await;
        let mut statuses: StatusStream = match opened {
            Ok(statuses) => statuses,
            Err(error) => {
                let policy = client_handle.inner.retry;
                failures += 1;
                registry.update(id, |info| {
                    info.errors += 1;
                    info.last_error = Some(error.to_string());
                });
                if !error.is_retryable() || failures >= policy.attempts {
                    registry.update(id, |info| info.state = SubscriptionState::Ended);
                    return;
                }
                client_handle.inner.runtime.sleep(policy.delay(failures - 1)).await;
                continue;
            }
        };
        registry.update(id, |info| info.state = SubscriptionState::Active);
        let runtime = client_handle.inner.runtime.clone();
        drop(client_handle);
        let ended = loop {
            // Start what may start: free workers, segments without a running handler.
            while running.len() < options.concurrency.max(1) {
                let Some(status) = pending.take(&busy) else { break };
                let segment = status.segment.clone();
                busy.insert(segment.clone());
                let call = AbortOnDrop(runtime.spawn(handler(status)));
                let runtime = runtime.clone();
                running.push(async move {
                    let outcome = match runtime.timeout(options.timeout, call).await {
                        Ok(Ok(Ok(()))) => Outcome::Delivered,
                        Ok(Ok(Err(error))) => Outcome::Failed(error.to_string()),
                        Ok(Err(join)) => Outcome::Failed(format!("handler panicked: {join}")),
                        Err(_) => Outcome::Failed(format!("handler timed out after {:?}", options.timeout)),
                    };
                    (segment, outcome)
                });
            }
            let event = poll_fn(|cx| {
                if let Poll::Ready(Some(done)) = running.poll_next_unpin(cx) {
                    return Poll::Ready(Ok(done));
                }
                statuses.poll_next_unpin(cx).map(Err)
            })
            .await;
            let Some(inner) = client.upgrade() else { return };
            let registry = &inner.subscriptions;
            match event {
                Ok((segment, outcome)) => {
                    busy.remove(&segment);
                    registry.update(id, |info| match outcome {
                        Outcome::Delivered => {
                            info.deliveries += 1;
                            info.last_delivery = Some(SystemTime::now());
                        }
                        Outcome::Failed(text) => {
                            info.errors += 1;
                            info.last_error = Some(text);
                        }
                    });
                }
                Err(Some(Ok(status))) => {
                    failures = 0;
                    if pending.push(status, options.max_pending) {
                        registry.update(id, |info| info.dropped += 1);
                    }
                }
                Err(Some(Err(error))) => break Some(error),
                Err(None) => break None,
            }
        };
        let Some(inner) = client.upgrade() else { return };
        let registry = &inner.subscriptions;
        match ended {
            Some(error) if error.is_retryable() => {
                failures += 1;
                registry.update(id, |info| {
                    info.errors += 1;
                    info.last_error = Some(error.to_string());
                });
                if failures >= inner.retry.attempts {
                    registry.update(id, |info| info.state = SubscriptionState::Ended);
                    return;
                }
                inner.runtime.sleep(inner.retry.delay(failures - 1)).await;
            }
            Some(error) => {
                registry.update(id, |info| {
                    info.errors += 1;
                    info.last_error = Some(error.to_string());
                    info.state = SubscriptionState::Ended;
                });
                return;
            }
            None => {
                registry.update(id, |info| info.state = SubscriptionState::Ended);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(segment: &str, last_sequence: u64) -> SegmentStatus {
        SegmentStatus { segment: segment.into(), last_sequence, ..SegmentStatus::default() }
    }

    #[test]
    fn pending_statuses_coalesce_per_segment_and_skip_busy_ones() {
        let mut pending = Pending::default();
        assert!(!pending.push(status("a", 1), 2));
        assert!(!pending.push(status("b", 1), 2));
        assert!(!pending.push(status("a", 2), 2), "a newer status of a waiting segment replaces it");
        assert!(pending.push(status("c", 1), 2), "a third segment drops the oldest waiting one");
        let busy = HashSet::from(["b".to_owned()]);
        assert_eq!(pending.take(&busy).map(|s| (s.segment, s.last_sequence)), Some(("c".into(), 1)));
        assert!(pending.take(&busy).is_none());
        assert_eq!(pending.take(&HashSet::new()).map(|s| s.segment), Some("b".into()));
    }
}
