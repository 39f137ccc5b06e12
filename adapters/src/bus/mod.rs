//! The message bus the engine publishes segment notifications on (PROTOCOL.md §6.2), behind a small async
//! trait: [`MemoryBus`], for a single server, is the default; `NatsBus` (feature `nats`) and `PgBus`
//! (PostgreSQL `LISTEN/NOTIFY`, feature `postgres`) span several server instances, with messages
//! encoded as JSON envelopes ([`codec`]).
//!
//! The engine task drives a [`MessageBus`] like this:
//!
//! * a node subscribing to a route calls [`MessageBus::subscribe`] with a [`BusDelivery`]: the bus
//!   hands every later notification of that route to [`BusDelivery::deliver`], which queues it for the
//!   engine (a bounded queue: a bus that delivers faster than the engine takes waits);
//! * [`MessageBus::publish`] after a produce committed; [`MessageBus::unsubscribe`] when the last
//!   subscriber of the route left;
//! * a bus that can no longer guarantee delivery on a route (connection to the broker lost) reports it
//!   with [`BusDelivery::lost`]: the node closes that route's subscribers with the error, and they
//!   resubscribe.
//!
//! The futures a bus returns are polled once inline by the engine task and spawned only if they are
//! not ready at once, so an in-process bus costs no task and no extra queue hop, while a networked bus
//! never blocks the engine.

pub mod codec;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_channel::Sender;
use streamkit_proto::node::{BusEvent, BusMessage};
use uuid::Uuid;

use crate::runtime::BoxFuture;

#[cfg(feature = "nats")]
pub use self::nats::{NatsBus, NatsConfig};
#[cfg(feature = "postgres")]
pub use self::postgres::PgBus;

/// A bus error, as text (it ends up in the notification circuit breaker's error message).
pub type BusError = String;

/// Where a bus delivers the notifications of one subscription: the engine, for one store's node.
///
/// Two deliveries are equal when they lead to the same node of the same engine, which is how
/// [`MessageBus::unsubscribe`] finds the subscription to remove.
#[derive(Clone, Debug)]
pub struct BusDelivery {
    engine: u64,
    store: Uuid,
    tx: Sender<(Uuid, BusEvent)>,
}

impl PartialEq for BusDelivery {
    fn eq(&self, other: &Self) -> bool {
        (self.engine, self.store) == (other.engine, other.store)
    }
}

impl Eq for BusDelivery {}

/// The engine behind a [`BusDelivery`] has stopped; the subscription is dead and may be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bus subscriber is gone")]
pub struct SubscriberGone;

impl BusDelivery {
    /// A delivery to the node of `store` in the engine identified by `engine`, through the engine's bus
    /// queue `tx`.
    pub(crate) fn new(engine: u64, store: Uuid, tx: Sender<(Uuid, BusEvent)>) -> Self {
        Self { engine, store, tx }
    }

    /// The store whose node receives the notifications.
    pub fn store(&self) -> Uuid {
        self.store
    }

    /// Hands a message of `route` to the node, waiting while the engine's bus queue is full.
    pub async fn deliver(&self, route: &str, message: BusMessage) -> Result<(), SubscriberGone> {
        let event = message.into_event(route.to_owned());
        self.tx.send((self.store, event)).await.map_err(|_| SubscriberGone)
    }

    /// Tells the node that delivery on `route` can no longer be guaranteed; the route counts as
    /// unsubscribed afterwards (the bus must forget this delivery for it).
    pub async fn lost(&self, route: &str, error: &str) -> Result<(), SubscriberGone> {
        let event = BusEvent::Lost { route: route.to_owned(), error: error.to_owned() };
        self.tx.send((self.store, event)).await.map_err(|_| SubscriberGone)
    }
}

/// A message bus for segment notifications. Implementations must be cheap to call: the engine task
/// calls these methods itself (see the [module](self) docs for how it treats the returned futures).
pub trait MessageBus: Send + Sync + 'static {
    /// Starts delivering the notifications published on `route` to `delivery` (from any server sharing
    /// the bus). Resolves once the subscription is active: a notification published after that must
    /// reach `delivery`.
    fn subscribe(&self, route: &str, delivery: BusDelivery) -> BoxFuture<'static, Result<(), BusError>>;

    /// Stops delivering `route` to `delivery`. Called exactly once per successful subscribe.
    fn unsubscribe(&self, route: &str, delivery: &BusDelivery) -> BoxFuture<'static, ()>;

    /// Publishes a message on `route`: segment notifications (an error counts towards the node's
    /// notification circuit breaker, PROTOCOL.md §6.2) and worker-presence announcements between instances.
    fn publish(&self, route: &str, message: BusMessage) -> BoxFuture<'static, Result<(), BusError>>;
}

/// The in-process bus: subscriptions live in a map, a publish hands the notification to every
/// delivery of its route. Only reaches the engines of this process, so it suits a single server.
#[derive(Debug, Default)]
pub struct MemoryBus {
    routes: Mutex<BTreeMap<String, Vec<BusDelivery>>>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of routes with at least one subscriber (for tests and metrics).
    pub fn route_count(&self) -> usize {
        self.routes.lock().map_or(0, |routes| routes.len())
    }
}

/// Text of the error when the bus's registry lock was poisoned by a panic elsewhere.
const POISONED: &str = "memory bus unavailable: its registry lock is poisoned";

impl MessageBus for MemoryBus {
    fn subscribe(&self, route: &str, delivery: BusDelivery) -> BoxFuture<'static, Result<(), BusError>> {
        let result = match self.routes.lock() {
            Ok(mut routes) => {
                let deliveries = routes.entry(route.to_owned()).or_default();
                if !deliveries.contains(&delivery) {
                    deliveries.push(delivery);
                }
                Ok(())
            }
            Err(_) => Err(POISONED.to_owned()),
        };
        Box::pin(async move { result })
    }

    fn unsubscribe(&self, route: &str, delivery: &BusDelivery) -> BoxFuture<'static, ()> {
        if let Ok(mut routes) = self.routes.lock()
            && let Some(deliveries) = routes.get_mut(route)
        {
            deliveries.retain(|d| d != delivery);
            if deliveries.is_empty() {
                routes.remove(route);
            }
        }
        Box::pin(async {})
    }

    fn publish(&self, route: &str, message: BusMessage) -> BoxFuture<'static, Result<(), BusError>> {
        let deliveries = match self.routes.lock() {
            Ok(routes) => routes.get(route).cloned().unwrap_or_default(),
            Err(_) => return Box::pin(async { Err(POISONED.to_owned()) }),
        };
        let route = route.to_owned();
        Box::pin(async move {
            for delivery in deliveries {
                // An engine that stopped has no subscriber left to tell; the others still get it.
                let _ = delivery.deliver(&route, message.clone()).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use streamkit_proto::api::{SegmentNotification, SegmentStatus};

    use super::*;

    fn notification(store: Uuid, last: u64) -> BusMessage {
        BusMessage::Segment(SegmentNotification {
            store_id: store,
            segment_status: SegmentStatus {
                space: "sp".into(),
                segment: "sg".into(),
                last_sequence: last,
                ..SegmentStatus::default()
            },
        })
    }

    #[test]
    fn publish_reaches_each_subscriber_of_the_route_once() {
        let bus = MemoryBus::new();
        let (tx, rx) = async_channel::bounded(16);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let da = BusDelivery::new(1, a, tx.clone());
        let db = BusDelivery::new(1, b, tx.clone());
        block_on(bus.subscribe("r1", da.clone())).unwrap();
        block_on(bus.subscribe("r1", da.clone())).unwrap();
        block_on(bus.subscribe("r1", db.clone())).unwrap();
        block_on(bus.subscribe("r2", db.clone())).unwrap();
        assert_eq!(bus.route_count(), 2);

        block_on(bus.publish("r1", notification(a, 1))).unwrap();
        let mut got: Vec<(Uuid, BusEvent)> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        got.sort_by_key(|(store, _)| *store);
        let expected = |store| (store, notification(a, 1).into_event("r1".into()));
        assert_eq!(got, vec![expected(a), expected(b)], "a duplicate subscribe is one subscription");

        block_on(bus.unsubscribe("r1", &da));
        block_on(bus.publish("r1", notification(a, 2))).unwrap();
        assert_eq!(rx.try_recv().map(|(store, _)| store), Ok(b));
        assert!(rx.try_recv().is_err());
        block_on(bus.unsubscribe("r1", &db));
        block_on(bus.unsubscribe("r2", &db));
        assert_eq!(bus.route_count(), 0);
        // Publishing on a route nobody listens to is fine.
        block_on(bus.publish("r3", notification(a, 3))).unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_engine_queue_makes_publish_wait_and_a_gone_engine_is_skipped() {
        let bus = MemoryBus::new();
        let (tx, rx) = async_channel::bounded(1);
        let store = Uuid::from_u128(1);
        block_on(bus.subscribe("r", BusDelivery::new(1, store, tx.clone()))).unwrap();
        block_on(bus.publish("r", notification(store, 1))).unwrap();
        let mut second = bus.publish("r", notification(store, 2));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(second.as_mut().poll(&mut cx).is_pending(), "the queue is full");
        assert!(rx.try_recv().is_ok());
        assert_eq!(second.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(())));
        drop(rx);
        block_on(bus.publish("r", notification(store, 3))).unwrap();
    }
}
