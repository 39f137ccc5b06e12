//! The engine spread over several shards (`ServerConfig::shards`): one connection's streams on stores
//! of every shard at once, subscriptions fed by the bus on the shard of their store, an in-process
//! client routed the same way, and a shutdown that drains every shard.

use crate::support;

use std::sync::Arc;

use futures_util::StreamExt;
use streamkit::client::Client;
use streamkit::runtime::Runtime;
use streamkit_proto::api::{ConsumeSegment, Request, SubscribeToSegmentStatus};
use streamkit_proto::server::shard_of;
use streamkit_proto::wire::{Codec, Message};
use support::*;
use uuid::Uuid;

const SHARDS: usize = 4;
const STORES: u128 = 16;
const RECORDS: u64 = 40;

async fn one_connection_uses_stores_of_every_shard(runtime: Arc<dyn Runtime>) {
    let mut config = memory_config();
    config.shards = SHARDS;
    let server = serve(&runtime, config).await;
    assert_eq!(server.engine().shards(), SHARDS);
    let stores: Vec<Uuid> = (1..=STORES).map(|n| Uuid::from_u128(0x5eed_0000 + n)).collect();
    for shard in 0..SHARDS {
        assert!(stores.iter().any(|s| shard_of(s, SHARDS) == shard), "no store on shard {shard}");
    }
    for codec in [Codec::Json, Codec::Cbor] {
        let segment = format!("sg-{codec:?}");
        let client = TestClient::connect(&runtime, &url(&server), &admin_token(), codec).await.unwrap();
        // A live subscription per store, all on this connection, before anything is produced.
        let mut subscriptions = Vec::new();
        for store in &stores {
            let request = Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
                space: "sp".into(),
                segment: segment.clone(),
                heartbeat_interval_seconds: 0,
            });
            subscriptions.push(client.open(*store, request).await);
        }
        // Produces on every store at once, interleaved on the connection.
        let mut producers = Vec::new();
        for store in &stores {
            let request = Request::Produce(streamkit_proto::api::Produce {
                space: "sp".into(),
                segment: segment.clone(),
            });
            producers.push(client.open(*store, request).await);
        }
        for sequence in 1..=RECORDS {
            for producer in &producers {
                let record = streamkit_proto::api::Record::new(sequence, format!("r{sequence}"));
                producer.send(Message::Record(record)).await;
            }
        }
        for producer in producers {
            producer.close_send().await;
            let statuses = producer.collect().await.ok().statuses();
            assert_eq!(statuses.last().map(|s| s.last_sequence), Some(RECORDS));
        }
        // Every subscription hears its own store's segment reach the end (and nothing else).
        for subscription in &subscriptions {
            loop {
                let Message::Status(status) = subscription.message().await else {
                    panic!("a subscription sends statuses only")
                };
                assert_eq!(status.segment, segment);
                if status.last_sequence == RECORDS {
                    break;
                }
            }
            subscription.cancel().await;
        }
        for store in &stores {
            let read = client
                .call(
                    *store,
                    Request::ConsumeSegment(ConsumeSegment {
                        space: "sp".into(),
                        segment: segment.clone(),
                        ..Default::default()
                    }),
                )
                .await
                .ok();
            assert_eq!(read.sequences(), (1..=RECORDS).collect::<Vec<_>>(), "store {store}");
        }
        client.close().await;
    }
    // An in-process client reaches the same stores through the same routing.
    let inproc = Client::in_process(runtime.clone(), server.engine()).await.unwrap();
    for store in &stores {
        let request = ConsumeSegment { space: "sp".into(), segment: "sg-Cbor".into(), ..Default::default() };
        let entries: Vec<_> = inproc.consume_segment(*store, request).collect().await;
        assert_eq!(entries.len() as u64, RECORDS, "store {store}");
    }
    inproc.close().await;
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_stores_open"), Some(STORES as f64), "{text}");
    // Shutdown drains every shard: each closes its stores.
    let metrics = server.metrics().clone();
    server.shutdown().await;
    assert_eq!(metric(&metrics.render(), "streamkit_stores_open"), Some(0.0));
}

per_runtime!(tokio: [one_connection_uses_stores_of_every_shard], smol: [one_connection_uses_stores_of_every_shard], async_std: []);
