//! [`StoreHandle`]: a client bound to one store, so the store id is not repeated on every call.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use streamkit_proto::api::{Consume, ConsumeSegment, ConsumeSpace, Entry, Metadata, Record, SegmentStatus};
use uuid::Uuid;

use super::{
    Client, EntryStream, FollowStream, InventoryStream, Lease, NameStream, Result, StatusStream,
    SubscribeOptions, WorkerOptions,
};

/// A [`Client`] bound to one store: every operation of the client, without the store id. Cheap to
/// clone and to make (a client handle and a UUID); handles of one client share its connection.
///
/// ```
/// # use futures_util::TryStreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_server, url, token) = streamkit::doc_support::server().await?;
/// let client = streamkit::connect(url, token).await?;
/// let orders = client.store(streamkit::Uuid::new_v4());
/// orders.append("orders", "order-42", "created", Default::default()).await?;
/// orders.append("orders", "order-42", "paid", Default::default()).await?;
/// let spaces: Vec<String> = orders.get_spaces().try_collect().await?;
/// assert_eq!(spaces, ["orders"]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct StoreHandle {
    client: Client,
    id: Uuid,
}

impl Client {
    /// A handle on the store `id` that passes it to every operation (see [`StoreHandle`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// let orders = client.store(store);
    /// orders.append("orders", "order-42", "created", Default::default()).await?;
    /// assert_eq!(orders.peek("orders", "order-42").await?.sequence, 1);
    /// # Ok(()) }
    /// ```
    pub fn store(&self, id: Uuid) -> StoreHandle {
        StoreHandle { client: self.clone(), id }
    }
}

impl StoreHandle {
    /// The store's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// [`Client::produce`] on this store.
    pub fn produce<S>(&self, space: impl Into<String>, segment: impl Into<String>, records: S) -> StatusStream
    where
        S: futures_core::Stream<Item = Record> + Send + 'static,
    {
        self.client.produce(self.id, space, segment, records)
    }

    /// [`Client::publish`] on this store.
    pub async fn publish(
        &self,
        space: &str,
        segment: &str,
        payload: impl Into<bytes::Bytes>,
        metadata: Metadata,
    ) -> Result<SegmentStatus> {
        self.client.publish(self.id, space, segment, payload, metadata).await
    }

    /// [`Client::append`] on this store.
    pub async fn append(
        &self,
        space: &str,
        segment: &str,
        payload: impl Into<bytes::Bytes>,
        metadata: Metadata,
    ) -> Result<SegmentStatus> {
        self.client.append(self.id, space, segment, payload, metadata).await
    }

    /// [`Client::append_json`] on this store.
    pub async fn append_json<T: Serialize + ?Sized>(
        &self,
        space: &str,
        segment: &str,
        value: &T,
        metadata: Metadata,
    ) -> Result<SegmentStatus> {
        self.client.append_json(self.id, space, segment, value, metadata).await
    }

    /// [`Client::peek`] on this store.
    pub async fn peek(&self, space: &str, segment: &str) -> Result<Entry> {
        self.client.peek(self.id, space, segment).await
    }

    /// [`Client::consume_segment`] on this store.
    pub fn consume_segment(&self, request: ConsumeSegment) -> EntryStream {
        self.client.consume_segment(self.id, request)
    }

    /// [`Client::consume_space`] on this store.
    pub fn consume_space(&self, request: ConsumeSpace) -> EntryStream {
        self.client.consume_space(self.id, request)
    }

    /// [`Client::consume`] on this store.
    pub fn consume(&self, request: Consume) -> EntryStream {
        self.client.consume(self.id, request)
    }

    /// [`Client::get_spaces`] on this store.
    pub fn get_spaces(&self) -> NameStream {
        self.client.get_spaces(self.id)
    }

    /// [`Client::get_segments`] on this store.
    pub fn get_segments(&self, space: impl Into<String>) -> NameStream {
        self.client.get_segments(self.id, space)
    }

    /// [`Client::subscribe_segment`] on this store.
    pub async fn subscribe_segment(
        &self,
        space: impl Into<String>,
        segment: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<StatusStream> {
        self.client.subscribe_segment(self.id, space, segment, options).await
    }

    /// [`Client::subscribe_space`] on this store.
    pub async fn subscribe_space(
        &self,
        space: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<StatusStream> {
        self.client.subscribe_space(self.id, space, options).await
    }

    /// [`Client::subscribe_workers`] on this store.
    pub async fn subscribe_workers(&self, options: WorkerOptions) -> Result<InventoryStream> {
        self.client.subscribe_workers(self.id, options).await
    }

    /// [`Client::follow_segment`] on this store.
    pub fn follow_segment(
        &self,
        space: impl Into<String>,
        segment: impl Into<String>,
        after: u64,
    ) -> FollowStream {
        self.client.follow_segment(self.id, space, segment, after)
    }

    /// [`Client::with_lease`] on this store.
    pub async fn with_lease<F, Fut, T>(&self, key: impl Into<String>, ttl: Duration, f: F) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.client.with_lease(self.id, key, ttl, f).await
    }
}
