//! The PostgreSQL bus: `LISTEN`/`NOTIFY` on the store's database, so a deployment on PostgreSQL needs
//! no other service.
//!
//! * **Channels**: one per route, named `streamkit_<hash>` ([`pg_channel`]): routes are longer than
//!   PostgreSQL's 63-byte identifiers, and the schema is part of the hash so deployments sharing a
//!   database (one schema each) stay apart.
//! * **Payloads**: the JSON envelope ([`super::codec`]). `NOTIFY` payloads must stay under
//!   8000 bytes; a larger message (a presence announcement with many workers) is stored in the
//!   `streamkit_bus_payloads` table and the notification carries `@<id>`, which listeners read back.
//!   Rows older than ten minutes are deleted by later large publishes.
//! * **Listening**: one dedicated connection per bus (not from the pool: `LISTEN` belongs to a
//!   session), on which every subscribed channel is `LISTEN`ed; a subscribe resolves once its
//!   `LISTEN` completed, so notifications published afterwards by any instance reach it. Publishing
//!   uses the store's pool (`SELECT pg_notify($1, $2)`, a cached statement).
//! * **Outage**: when the listening connection breaks (database restart, network), notifications
//!   sent meanwhile are gone, so every subscription is reported lost ([`BusDelivery::lost`]):
//!   subscribers are closed with the reason and re-subscribe. The bus reconnects in the background
//!   (back-off from 100 ms to 5 s); subscribes are refused until it has, publishes fail while the
//!   database is down (the node's notification circuit breaker applies, PROTOCOL.md §6.2).
//!
//! Notifications from one publishing connection arrive in order; from several pooled connections
//! they may interleave, which the node tolerates (a subscriber's `last_sequence` never goes back).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use streamkit_proto::node::BusMessage;
use tokio_postgres::{AsyncMessage, NoTls};

use super::codec::{self, pg_channel};
use super::{BusDelivery, BusError, MessageBus};
use crate::log_limit::limited_log;
use crate::runtime::BoxFuture;
use crate::sidecar;
use crate::store::PgDatabase;
use crate::store::postgres::quote_ident;

/// Payloads longer than this go through the payload table (PostgreSQL's limit is 8000 bytes).
pub const MAX_NOTIFY_PAYLOAD: usize = 7900;

struct Channel {
    route: String,
    deliveries: Vec<BusDelivery>,
}

#[derive(Default)]
struct ListenState {
    /// The listening connection's client while it is up.
    client: Option<Arc<tokio_postgres::Client>>,
    /// Bumped on every (re)connection: work begun on an older connection must not register.
    generation: u64,
    channels: BTreeMap<String, Channel>,
}

struct Shared {
    pool: Pool,
    schema: String,
    pg: tokio_postgres::Config,
    state: Mutex<ListenState>,
    /// Serialises LISTEN/UNLISTEN so that a channel is listened to exactly while it has deliveries.
    listen: tokio::sync::Mutex<()>,
    notify_sql: String,
    spill_sql: String,
    fetch_sql: String,
    prune_sql: String,
    listener: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(Some(listener)) = self.listener.lock().map(|mut l| l.take()) {
            listener.abort();
        }
    }
}

/// A [`MessageBus`] on PostgreSQL `LISTEN`/`NOTIFY`; see the [module](self) docs.
#[derive(Clone)]
pub struct PgBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBus")
            .field("schema", &self.shared.schema)
            .field("listening", &self.is_listening())
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<ListenState>) -> Result<std::sync::MutexGuard<'_, ListenState>, BusError> {
    state.lock().map_err(|_| "postgres bus registry poisoned".to_owned())
}

impl PgBus {
    /// Starts the bus on the database of `db` (its pool and schema), waiting until the listening
    /// connection is up (at most the database's connect timeout).
    pub async fn connect(db: &PgDatabase) -> Result<Self, BusError> {
        let config = db.config().clone();
        let pg: tokio_postgres::Config =
            config.url.parse().map_err(|e| format!("invalid PostgreSQL connection string: {e}"))?;
        let table = format!("{}.streamkit_bus_payloads", quote_ident(&config.schema));
        let shared = Arc::new(Shared {
            pool: db.pool().clone(),
            schema: config.schema.clone(),
            pg,
            state: Mutex::new(ListenState::default()),
            listen: tokio::sync::Mutex::new(()),
            notify_sql: "SELECT pg_notify($1, $2)".to_owned(),
            spill_sql: format!(
                "WITH ins AS (INSERT INTO {table} (payload) VALUES ($2) RETURNING id) \
                 SELECT pg_notify($1, '@' || id::text) FROM ins"
            ),
            fetch_sql: format!("SELECT payload FROM {table} WHERE id = $1"),
            prune_sql: format!("DELETE FROM {table} WHERE created_at < now() - interval '10 minutes'"),
            listener: Mutex::new(None),
        });
        let (up_tx, up_rx) = futures_channel::oneshot::channel();
        let task = sidecar::spawn(listen_loop(Arc::downgrade(&shared), Some(up_tx)))?;
        if let Ok(mut listener) = shared.listener.lock() {
            *listener = Some(task.abort_handle());
        }
        let bus = Self { shared };
        // The timer must be created on the I/O runtime: the caller may run on smol or async-std.
        let limit = config.connect_timeout + Duration::from_secs(1);
        let wait = sidecar::run(async move { tokio::time::timeout(limit, up_rx).await });
        match wait.await? {
            Ok(Ok(Ok(()))) => Ok(bus),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) | Err(_) => {
                Err("postgres bus unavailable: the listening connection did not come up".into())
            }
        }
    }

    /// Whether the listening connection is up.
    pub fn is_listening(&self) -> bool {
        self.shared.state.lock().is_ok_and(|s| s.client.is_some())
    }

    /// Channels listened to (for tests and diagnostics).
    pub fn channel_count(&self) -> usize {
        self.shared.state.lock().map_or(0, |s| s.channels.len())
    }
}

/// Keeps a listening connection up for as long as the bus exists; reports every subscription lost
/// when it breaks. `up` learns the outcome of the first attempt.
async fn listen_loop(
    shared: Weak<Shared>,
    mut up: Option<futures_channel::oneshot::Sender<Result<(), BusError>>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let connected = strong.pg.connect(NoTls).await;
        drop(strong);
        let (client, mut connection) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                let error = format!("postgres bus unavailable: {e}");
                match up.take() {
                    Some(up) => {
                        let _ = up.send(Err(error));
                        return;
                    }
                    None => tracing::debug!(%error, "postgres bus: reconnect failed"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let client = Arc::new(client);
        {
            let Some(strong) = shared.upgrade() else { return };
            if let Ok(mut state) = strong.state.lock() {
                state.client = Some(Arc::clone(&client));
                state.generation += 1;
            }
        }
        tracing::info!("postgres bus listening");
        if let Some(up) = up.take() {
            let _ = up.send(Ok(()));
        }
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let error = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let Some(strong) = shared.upgrade() else { return };
                    dispatch(&strong, n.channel(), n.payload()).await;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("postgres bus connection lost: {e}"),
                None => break "postgres bus connection lost".to_owned(),
            }
        };
        drop(client);
        let Some(strong) = shared.upgrade() else { return };
        let lost = match strong.state.lock() {
            Ok(mut state) => {
                state.client = None;
                state.generation += 1;
                std::mem::take(&mut state.channels)
            }
            Err(_) => return,
        };
        drop(strong);
        if !lost.is_empty() {
            tracing::warn!(channels = lost.len(), %error, "postgres bus: subscriptions lost");
        }
        for channel in lost.into_values() {
            for delivery in channel.deliveries {
                let _ = delivery.lost(&channel.route, &error).await;
            }
        }
    }
}

/// Hands a notification to the deliveries of its channel.
async fn dispatch(shared: &Shared, channel: &str, payload: &str) {
    let (route, deliveries) = match shared.state.lock() {
        Ok(state) => match state.channels.get(channel) {
            Some(c) => (c.route.clone(), c.deliveries.clone()),
            None => return,
        },
        Err(_) => return,
    };
    let decoded = match payload.strip_prefix('@') {
        Some(id) => fetch_spilled(shared, id).await.and_then(|json| codec::decode(json.as_bytes())),
        None => codec::decode(payload.as_bytes()),
    };
    match decoded {
        Ok(message) => {
            for delivery in deliveries {
                let _ = delivery.deliver(&route, message.clone()).await;
            }
        }
        Err(e) => {
            // Anyone who can NOTIFY on the database can send these as fast as they like.
            limited_log!(warn, [%route, error = %e], "postgres bus: undecodable notification skipped");
        }
    }
}

async fn fetch_spilled(shared: &Shared, id: &str) -> Result<String, BusError> {
    let id: i64 = id.parse().map_err(|_| format!("invalid spilled payload id {id:?}"))?;
    let client = shared.pool.get().await.map_err(|e| format!("postgres bus unavailable: {e}"))?;
    let statement = client.prepare_cached(&shared.fetch_sql).await.map_err(|e| e.to_string())?;
    let row = client.query_opt(&statement, &[&id]).await.map_err(|e| e.to_string())?;
    row.map(|r| r.get(0)).ok_or_else(|| format!("spilled payload {id} is gone"))
}

async fn subscribe(shared: Arc<Shared>, route: String, delivery: BusDelivery) -> Result<(), BusError> {
    let channel = pg_channel(&shared.schema, &route);
    let _serial = shared.listen.lock().await;
    let (client, generation) = {
        let mut state = lock(&shared.state)?;
        let client = state.client.clone().ok_or("postgres bus unavailable: not listening (reconnecting)")?;
        if let Some(existing) = state.channels.get_mut(&channel) {
            if !existing.deliveries.contains(&delivery) {
                existing.deliveries.push(delivery);
            }
            return Ok(());
        }
        (client, state.generation)
    };
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(&channel)))
        .await
        .map_err(|e| format!("postgres bus subscribe failed: {e}"))?;
    let mut state = lock(&shared.state)?;
    if state.generation != generation {
        return Err("postgres bus connection lost while subscribing".to_owned());
    }
    state.channels.insert(channel, Channel { route, deliveries: vec![delivery] });
    Ok(())
}

async fn unsubscribe(shared: Arc<Shared>, route: String, delivery: BusDelivery) {
    let channel = pg_channel(&shared.schema, &route);
    let _serial = shared.listen.lock().await;
    let client = {
        let Ok(mut state) = shared.state.lock() else { return };
        let Some(existing) = state.channels.get_mut(&channel) else { return };
        existing.deliveries.retain(|d| d != &delivery);
        if !existing.deliveries.is_empty() {
            return;
        }
        state.channels.remove(&channel);
        state.client.clone()
    };
    if let Some(client) = client
        && let Err(e) = client.batch_execute(&format!("UNLISTEN {}", quote_ident(&channel))).await
    {
        // The connection broke: its listens are gone with it.
        tracing::debug!(error = %e, "postgres bus: UNLISTEN failed");
    }
}

async fn publish(shared: Arc<Shared>, channel: String, payload: String) -> Result<(), BusError> {
    let client = shared.pool.get().await.map_err(|e| format!("postgres bus unavailable: {e}"))?;
    let failed = |e: tokio_postgres::Error| format!("postgres bus publish failed: {e}");
    if payload.len() <= MAX_NOTIFY_PAYLOAD {
        let statement = client.prepare_cached(&shared.notify_sql).await.map_err(failed)?;
        client.execute(&statement, &[&channel, &payload]).await.map_err(failed)?;
    } else {
        let statement = client.prepare_cached(&shared.spill_sql).await.map_err(failed)?;
        client.execute(&statement, &[&channel, &payload]).await.map_err(failed)?;
        let prune = client.prepare_cached(&shared.prune_sql).await.map_err(failed)?;
        client.execute(&prune, &[]).await.map_err(failed)?;
    }
    Ok(())
}

impl MessageBus for PgBus {
    fn subscribe(&self, route: &str, delivery: BusDelivery) -> BoxFuture<'static, Result<(), BusError>> {
        let future = sidecar::run(subscribe(Arc::clone(&self.shared), route.to_owned(), delivery));
        Box::pin(async move { future.await? })
    }

    fn unsubscribe(&self, route: &str, delivery: &BusDelivery) -> BoxFuture<'static, ()> {
        let future = sidecar::run(unsubscribe(Arc::clone(&self.shared), route.to_owned(), delivery.clone()));
        Box::pin(async move {
            let _ = future.await;
        })
    }

    fn publish(&self, route: &str, message: BusMessage) -> BoxFuture<'static, Result<(), BusError>> {
        let channel = pg_channel(&self.shared.schema, route);
        // JSON is UTF-8; NOTIFY payloads are text.
        let payload = String::from_utf8(codec::encode(&message)).unwrap_or_default();
        let future = sidecar::run(publish(Arc::clone(&self.shared), channel, payload));
        Box::pin(async move { future.await? })
    }
}

#[cfg(test)]
mod tests {
    use streamkit_proto::api::WorkerInfo;
    use streamkit_proto::node::{BusEvent, PresenceAnnouncement};
    use uuid::Uuid;

    use super::*;
    use crate::store::PgConfig;

    /// A message larger than NOTIFY allows travels through the payload table; a small one inline.
    #[test]
    fn large_messages_are_spilled_and_read_back() {
        let url = std::env::var("STREAMKIT_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("sk_spill_{}", Uuid::new_v4().simple());
        let db = match PgDatabase::connect_blocking(PgConfig::new(url).with_schema(schema.clone())) {
            Ok(db) => db,
            Err(e) => {
                eprintln!("SKIPPED large_messages_are_spilled_and_read_back: PostgreSQL unavailable: {e}");
                return;
            }
        };
        let bus = sidecar::block_on(PgBus::connect(&db)).unwrap();
        let (tx, rx) = async_channel::bounded(8);
        let store = Uuid::new_v4();
        let route = "tenant.streamkit.worker_presence[test]";
        sidecar::block_on(bus.subscribe(route, BusDelivery::new(1, store, tx))).unwrap();
        let workers = (0..200u128)
            .map(|i| WorkerInfo {
                worker_id: Uuid::from_u128(i),
                metadata: Default::default(),
                last_seen_at: 1,
            })
            .collect();
        let big =
            PresenceAnnouncement { instance: Uuid::from_u128(9), store_id: store, workers, sync: false };
        assert!(codec::encode(&BusMessage::Presence(big.clone())).len() > MAX_NOTIFY_PAYLOAD);
        let small = PresenceAnnouncement { workers: Vec::new(), ..big.clone() };
        for message in [big, small] {
            sidecar::block_on(bus.publish(route, BusMessage::Presence(message.clone()))).unwrap();
            let received = sidecar::block_on(async {
                futures_util::future::select(
                    Box::pin(rx.recv()),
                    Box::pin(sidecar::run(async { tokio::time::sleep(Duration::from_secs(10)).await })),
                )
                .await
            });
            match received {
                futures_util::future::Either::Left((
                    Ok((to, BusEvent::Announcement { announcement, .. })),
                    _,
                )) => {
                    assert_eq!((to, announcement), (store, message));
                }
                _ => panic!("no announcement delivered"),
            }
        }
        drop(bus);
        let pool = db.pool().clone();
        let drop_schema = format!("DROP SCHEMA {} CASCADE", quote_ident(&schema));
        sidecar::block_on(sidecar::run(async move {
            if let Ok(client) = pool.get().await {
                let _ = client.batch_execute(&drop_schema).await;
            }
        }))
        .unwrap();
    }
}
