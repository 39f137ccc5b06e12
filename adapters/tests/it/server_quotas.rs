//! Store quotas over real sockets: a store over its rate or its storage quota is refused with a clear
//! error while what it stored stays readable, another store on the same server is not limited, and
//! every refusal is counted.

use crate::support;

use std::sync::Arc;

use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit_proto::api::{ConsumeSegment, Record, Request};
use streamkit_proto::node::quota::{QuotaConfig, StoreQuotas};
use streamkit_proto::wire::Codec;
use support::*;
use uuid::Uuid;

fn tokio_runtime() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime::try_current().unwrap())
}

fn consume(space: &str, segment: &str) -> Request {
    Request::ConsumeSegment(ConsumeSegment {
        space: space.into(),
        segment: segment.into(),
        ..ConsumeSegment::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_its_rate_is_refused_and_another_is_not_limited() {
    let runtime = tokio_runtime();
    let limited = Uuid::new_v4();
    let mut config = memory_config();
    config.node.quotas = QuotaConfig {
        default: StoreQuotas::default(),
        stores: [(limited, StoreQuotas { max_records_per_second: Some(50), ..StoreQuotas::default() })]
            .into(),
    };
    let server = serve(&runtime, config).await;
    let client = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await.unwrap();

    // Far more than the bucket (50) plus what it refills while they are sent, even on a slow machine.
    let outcome = client.produce(limited, "sp", "sg", records(1, 2_000)).await;
    let acknowledged = outcome.statuses().last().map_or(0, |s| s.last_sequence);
    assert!((1..2_000).contains(&acknowledged), "{acknowledged} acknowledged");
    assert_eq!(
        outcome.end,
        Err("remote closed stream: store produce rate exceeded (50 records/s)".to_owned())
    );
    // What was acknowledged is stored, and nothing else.
    let stored = client.call(limited, consume("sp", "sg")).await.ok().sequences();
    assert_eq!(stored, (1..=acknowledged).collect::<Vec<_>>());

    let free = Uuid::new_v4();
    assert_eq!(
        client.produce(free, "sp", "sg", records(1, 200)).await.ok().statuses().last().unwrap().last_sequence,
        200
    );
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_refusals_total{reason=\"quota_record_rate\"}"), Some(1.0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_at_its_storage_quota_keeps_its_data_readable() {
    let runtime = tokio_runtime();
    let mut config = memory_config();
    config.node.quotas.default = StoreQuotas { max_stored_bytes: Some(20_000), ..StoreQuotas::default() };
    let server = serve(&runtime, config).await;
    let client = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Cbor).await.unwrap();
    let store = Uuid::new_v4();
    let mut acknowledged = 0;
    let refusal = loop {
        let record = Record::new(acknowledged + 1, vec![b'x'; 1_000]);
        let outcome = client.produce(store, "sp", "sg", vec![record]).await;
        match outcome.end {
            Ok(()) => acknowledged += 1,
            Err(error) => break error,
        }
        assert!(acknowledged < 100, "the quota never applied");
    };
    assert_eq!(refusal, "remote closed stream: store storage quota exceeded (20000 bytes)");
    // Each 1,000-byte record is stored twice (segment and space indexes): about ten fit.
    assert!((5..=20).contains(&acknowledged), "{acknowledged} records stored");
    let stored = client.call(store, consume("sp", "sg")).await.ok().sequences();
    assert_eq!(stored, (1..=acknowledged).collect::<Vec<_>>());
    // Every store has its own account: another one starts empty.
    let other = Uuid::new_v4();
    client.produce(other, "sp", "sg", records(1, 3)).await.ok();
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_refusals_total{reason=\"quota_stored_bytes\"}"), Some(1.0));
    server.shutdown().await;
}
