//! The same `server::start` on every runtime (tokio, smol and the deprecated async-std): the
//! handshake's 401 cases, produce and consume in both codecs, the probes, and a graceful shutdown.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use streamkit::auth::{TokenClaims, TokenSigner};
use streamkit::runtime::Runtime;
use streamkit::ws::{DialError, DialOptions, dial};
use streamkit_proto::api::{ConsumeSegment, Request};
use streamkit_proto::wire::Codec;
use support::*;
use uuid::Uuid;

async fn expect_unauthorized(runtime: &Arc<dyn Runtime>, base: &str, token: &str, case: &str) {
    match dial(&**runtime, base, &DialOptions::new(token)).await {
        Err(DialError::Unauthorized) => {}
        Err(other) => panic!("{case}: expected 401, got {other}"),
        Ok(_) => panic!("{case}: expected 401, got an upgrade"),
    }
}

async fn scenario(runtime: Arc<dyn Runtime>) {
    let server = serve(&runtime, memory_config()).await;
    let base = url(&server);

    // Handshake failures are HTTP 401 before any upgrade (PROTOCOL.md §2.2).
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let expired =
        TokenClaims { exp: now - 120, iat: now - 180, ..TokenClaims::new(["streamkit::*"], Duration::ZERO) };
    let cases = [
        ("missing token", String::new()),
        ("malformed token", "not-a-jwt".to_owned()),
        (
            "bad signature",
            TokenSigner::hs256(b"other-secret")
                .unwrap()
                .sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60)))
                .unwrap(),
        ),
        ("expired token", TokenSigner::hs256(SECRET).unwrap().sign(&expired).unwrap()),
        ("no usable scope", token_for(["other::scope"], Duration::from_secs(60))),
        ("malformed store scope", token_for(["streamkit::not-a-uuid"], Duration::from_secs(60))),
    ];
    for (case, token) in &cases {
        expect_unauthorized(&runtime, &base, token, case).await;
    }
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_errors_total{kind=\"auth\"}"), Some(cases.len() as f64), "{text}");
    assert_eq!(metric(&text, "streamkit_connections_accepted_total"), Some(0.0));

    // Probes.
    assert_eq!(http_get(&runtime, server.local_addr(), "/healthz").await.0, 200);
    assert_eq!(http_get(&runtime, server.local_addr(), "/readyz").await.0, 200);

    // Produce and consume in both codecs.
    let store = Uuid::new_v4();
    for (index, codec) in CODECS.into_iter().enumerate() {
        let client = TestClient::connect(&runtime, &base, &admin_token(), codec).await.unwrap();
        let first = index as u64 * 50 + 1;
        let produced = client.produce(store, "sp", "sg", records(first, first + 49)).await.ok();
        assert_eq!(produced.statuses().last().map(|s| s.last_sequence), Some(first + 49));
        let consume = Request::ConsumeSegment(ConsumeSegment {
            space: "sp".into(),
            segment: "sg".into(),
            ..ConsumeSegment::default()
        });
        let consumed = client.call(store, consume).await.ok();
        assert_eq!(
            consumed.sequences(),
            (1..=first + 49).collect::<Vec<_>>(),
            "{codec:?} on {}",
            runtime.name()
        );
        if codec == Codec::Cbor {
            // The connection stays open until the shutdown below closes it.
            let addr = server.local_addr();
            let runtime2 = runtime.clone();
            server.shutdown().await;
            assert!(client.closed().await.contains("muxer closed"), "the close frame reached the client");
            assert!(
                dial(&*runtime2, &format!("ws://{addr}"), &DialOptions::new(admin_token())).await.is_err()
            );
            return;
        }
        client.close().await;
    }
    unreachable!("the CBOR round shuts the server down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tokio() {
    let runtime: Arc<dyn Runtime> = Arc::new(streamkit::runtime::TokioRuntime::try_current().unwrap());
    scenario(runtime).await;
}

#[cfg(feature = "smol")]
#[test]
fn on_smol() {
    let runtime: Arc<dyn Runtime> = Arc::new(streamkit::runtime::SmolRuntime::new());
    smol::block_on(scenario(runtime));
}

#[cfg(feature = "async-std")]
#[test]
#[allow(deprecated)]
fn on_async_std() {
    let runtime: Arc<dyn Runtime> = Arc::new(streamkit::runtime::AsyncStdRuntime::new());
    async_std::task::block_on(scenario(runtime));
}
