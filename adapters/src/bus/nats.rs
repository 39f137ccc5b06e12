//! The NATS bus: core NATS (no JetStream), one subject per route ([`nats_subject`]), messages as JSON
//! envelopes ([`super::codec`] module).
//!
//! * **Subscribe**: one NATS subscription per node and route, confirmed with a server round trip
//!   (`flush`) before it counts as active, so a notification published afterwards by any instance
//!   reaches it. Refused while the client is not connected.
//! * **Publish**: refused while the client is not connected (the error counts towards the node's
//!   notification circuit breaker, PROTOCOL.md §6.2; produce keeps working).
//! * **Outage**: core NATS does not replay what was published while a subscriber was cut off, so when
//!   the connection drops (or the server reports this client as a slow consumer, i.e. it dropped
//!   messages), every subscription is reported lost ([`BusDelivery::lost`]): subscribers are closed
//!   with the reason and re-subscribe. The client reconnects by itself (async-nats, with back-off);
//!   subscriptions made after that deliver again.
//!
//! async-nats needs tokio: it runs on the dedicated I/O runtime (see `sidecar`), like the PostgreSQL
//! driver, so this bus serves servers on every runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use futures_util::StreamExt;
use streamkit_proto::node::BusMessage;

use super::codec::{self, nats_subject};
use super::{BusDelivery, BusError, MessageBus};
use crate::log_limit::limited_log;
use crate::runtime::BoxFuture;
use crate::sidecar;

/// How to reach NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server address(es): `nats://host:port` (several separated by commas).
    pub url: String,
    /// Prepended to every subject (default empty), e.g. `prod.` to keep deployments sharing a NATS
    /// server apart.
    pub subject_prefix: String,
    /// Time to establish the connection (default 5 s).
    pub connect_timeout: Duration,
}

impl NatsConfig {
    /// Defaults for everything but the address.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), subject_prefix: String::new(), connect_timeout: Duration::from_secs(5) }
    }
}

struct Subscription {
    route: String,
    delivery: BusDelivery,
    task: tokio::task::AbortHandle,
}

/// Live subscriptions; shared with the connection-event callback.
#[derive(Default)]
struct Registry {
    subscriptions: Mutex<Vec<Subscription>>,
    /// Bumped on every loss: a subscribe that straddled one must not register.
    generation: AtomicU64,
}

impl Registry {
    /// Reports every subscription lost and forgets it.
    async fn lose_all(&self, error: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let lost = match self.subscriptions.lock() {
            Ok(mut subscriptions) => std::mem::take(&mut *subscriptions),
            Err(_) => return,
        };
        if !lost.is_empty() {
            tracing::warn!(subscriptions = lost.len(), error, "NATS bus: subscriptions lost");
        }
        for subscription in lost {
            subscription.task.abort();
            // An engine that stopped has nobody left to tell.
            let _ = subscription.delivery.lost(&subscription.route, error).await;
        }
    }
}

struct Shared {
    client: async_nats::Client,
    config: NatsConfig,
    registry: Arc<Registry>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(subscriptions) = self.registry.subscriptions.lock() {
            for subscription in subscriptions.iter() {
                subscription.task.abort();
            }
        }
    }
}

/// A [`MessageBus`] on NATS; see the [module](self) docs.
#[derive(Clone)]
pub struct NatsBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.shared.config.url)
            .field("state", &self.shared.client.connection_state())
            .finish_non_exhaustive()
    }
}

fn unavailable(state: State) -> BusError {
    format!("nats bus unavailable: {state}")
}

impl NatsBus {
    /// Connects to NATS; an error if it cannot be reached within the connect timeout.
    pub async fn connect(config: NatsConfig) -> Result<Self, BusError> {
        sidecar::run(Self::connect_on_io(config)).await?
    }

    async fn connect_on_io(config: NatsConfig) -> Result<Self, BusError> {
        let registry = Arc::new(Registry::default());
        let events = Arc::clone(&registry);
        let options = async_nats::ConnectOptions::new()
            .name("streamkit")
            .connection_timeout(config.connect_timeout)
            .max_reconnects(None)
            .event_callback(move |event| {
                let registry = Arc::clone(&events);
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            registry.lose_all("nats bus connection lost").await;
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            registry.lose_all("nats bus dropped notifications (slow consumer)").await;
                        }
                        async_nats::Event::Connected => tracing::info!("NATS bus connected"),
                        other => tracing::debug!(event = %other, "NATS bus event"),
                    }
                }
            });
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(|e| format!("nats bus unavailable: cannot connect to {}: {e}", config.url))?;
        Ok(Self { shared: Arc::new(Shared { client, config, registry }) })
    }

    /// Subscriptions currently delivering (for tests and diagnostics).
    pub fn subscription_count(&self) -> usize {
        self.shared.registry.subscriptions.lock().map_or(0, |s| s.len())
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == State::Connected
    }
}

async fn subscribe(shared: Arc<Shared>, route: String, delivery: BusDelivery) -> Result<(), BusError> {
    let state = shared.client.connection_state();
    if state != State::Connected {
        return Err(unavailable(state));
    }
    let generation = shared.registry.generation.load(Ordering::SeqCst);
    let subject = nats_subject(&shared.config.subject_prefix, &route);
    let mut subscriber =
        shared.client.subscribe(subject).await.map_err(|e| format!("nats bus subscribe failed: {e}"))?;
    // The server has the subscription once it answered a round trip behind it.
    shared.client.flush().await.map_err(|e| format!("nats bus subscribe failed: {e}"))?;
    let task = {
        let (route, delivery) = (route.clone(), delivery.clone());
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                match codec::decode(&message.payload) {
                    Ok(message) => {
                        if delivery.deliver(&route, message).await.is_err() {
                            break; // the engine stopped
                        }
                    }
                    Err(e) => {
                        // Anyone who can publish on the subject can send these as fast as they like.
                        limited_log!(warn, [%route, error = %e], "NATS bus: undecodable message skipped");
                    }
                }
            }
        })
    };
    let mut subscriptions = shared.registry.subscriptions.lock().map_err(|_| "nats bus registry poisoned")?;
    if shared.registry.generation.load(Ordering::SeqCst) != generation {
        task.abort();
        return Err("nats bus connection lost while subscribing".to_owned());
    }
    subscriptions.push(Subscription { route, delivery, task: task.abort_handle() });
    Ok(())
}

impl MessageBus for NatsBus {
    fn subscribe(&self, route: &str, delivery: BusDelivery) -> BoxFuture<'static, Result<(), BusError>> {
        let future = sidecar::run(subscribe(Arc::clone(&self.shared), route.to_owned(), delivery));
        Box::pin(async move { future.await? })
    }

    fn unsubscribe(&self, route: &str, delivery: &BusDelivery) -> BoxFuture<'static, ()> {
        if let Ok(mut subscriptions) = self.shared.registry.subscriptions.lock() {
            subscriptions.retain(|s| {
                let matches = s.route == route && &s.delivery == delivery;
                if matches {
                    // Dropping the subscriber in its task unsubscribes from the server.
                    s.task.abort();
                }
                !matches
            });
        }
        Box::pin(async {})
    }

    fn publish(&self, route: &str, message: BusMessage) -> BoxFuture<'static, Result<(), BusError>> {
        let shared = Arc::clone(&self.shared);
        let subject = nats_subject(&shared.config.subject_prefix, route);
        let payload = codec::encode(&message);
        let future = sidecar::run(async move {
            let state = shared.client.connection_state();
            if state != State::Connected {
                return Err(unavailable(state));
            }
            shared
                .client
                .publish(subject, payload.into())
                .await
                .map_err(|e| format!("nats bus publish failed: {e}"))
        });
        Box::pin(async move { future.await? })
    }
}
