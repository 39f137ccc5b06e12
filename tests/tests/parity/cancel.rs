//! A cancelled read stops on the server.
//!
//! Dropping a consume sends `mux::close` with `context canceled` and the client forgets the channel.
//! The server used to ignore that end for reads and went on reading storage and sending the rest of the
//! range to nobody, holding the stream (and its slot under the per-connection stream limit) until the
//! end. Now the read stops at once (`core/src/node/read.rs`, `peer_end`): the stream is released and
//! counted as cancelled, and only a small part of a large range was ever sent.

use futures_util::StreamExt;
use streamkit::core::api::{Consume, ConsumeSpace};
use streamkit::core::lexkey::LexKey;
use streamkit_tests::Env;

use super::common::*;

// Multi-threaded runtimes only: how much a read sends before the server sees the cancel is a latency,
// and on smol's single executor thread (every client and server task on one thread) it can approach
// the whole data set under load, which would test the scheduler rather than the server.
across_tokio!(cancelled_reads_stop_on_the_server);
across_all!(@one async_std_json, ASYNC_STD_JSON, cancelled_reads_stop_on_the_server);

async fn cancelled_reads_stop_on_the_server(env: Env) {
    // Enough that a read running to its end sends far more than a stopped one: on the multi-threaded
    // runtimes a stopped read had sent at most about 2000 entries (its credit, 256 frames, per batch in
    // flight while the cancel travelled).
    let total: u64 = 30_000;
    let client = env.client();
    let mut next = 1;
    while next <= total {
        let last = (next + 9_999).min(total);
        produce_with(&env, client, "cancel", "big", next..=last, |seq| seq.to_be_bytes().to_vec()).await;
        next = last + 1;
    }
    let store = env.store();
    let kinds = [
        ("consume_segment", client.consume_segment(store, segment_request("cancel", "big"))),
        (
            "consume_space",
            client.consume_space(store, ConsumeSpace { space: "cancel".into(), ..ConsumeSpace::default() }),
        ),
        (
            "consume",
            client.consume(
                store,
                Consume { offsets: [("cancel".to_owned(), LexKey::default())].into(), ..Consume::default() },
            ),
        ),
    ];
    for (op, mut stream) in kinds {
        let cancelled = format!("streamkit_operations_total{{op=\"{op}\",outcome=\"cancelled\"}}");
        let completed = format!("streamkit_operations_total{{op=\"{op}\",outcome=\"ok\"}}");
        let sent_before = env.metric("streamkit_sent_frames_total");
        let first = env.step("first entry", stream.next()).await.unwrap().unwrap();
        assert_eq!((first.segment.as_str(), first.sequence), ("big", 1), "{op}");
        drop(stream);
        env.eventually(&format!("the server to stop the cancelled {op}"), || {
            env.metric("streamkit_streams_active") == 0.0
        })
        .await;
        assert_eq!(env.metric(&cancelled), 1.0, "{op}: counted as cancelled");
        assert_eq!(env.metric(&completed), 0.0, "{op}: the read did not run to its end");
        if env.transport().is_socket() {
            let sent = env.metric("streamkit_sent_frames_total") - sent_before;
            eprintln!("{op}: {sent} frames sent of {total} entries");
            assert!(
                sent < (total / 2) as f64,
                "{op}: the server sent {sent} of {total} entries after the client cancelled"
            );
        }
    }
    // The connection serves new reads as usual.
    let mut request = segment_request("cancel", "big");
    request.min_sequence = total - 9;
    let tail = consume_segment(&env, client, request).await;
    assert_eq!(sequences(&tail), ((total - 9)..=total).collect::<Vec<_>>());
}
