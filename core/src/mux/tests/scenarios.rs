//! End-to-end scenarios: client and server sessions over simulated links (PROTOCOL.md §9.3 muxer and bidi
//! stream tests that apply to a sans-IO session).

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::mux::EndReason;
use crate::sim::{LinkConfig, MuxNet, MuxNetConfig, MuxPair, Observed};

fn net(codec: Codec, clients: usize) -> MuxNet {
    MuxNet::new(MuxNetConfig {
        clients,
        codec,
        link: LinkConfig { latency: Millis(5), drop_probability: 0.0 },
        ..MuxNetConfig::default()
    })
}

/// A server application that echoes every payload and, at the client's end, closes and releases.
fn echo(pair: &mut MuxPair, now: Millis) {
    for observed in pair.server.take_new() {
        match observed {
            Observed::Item(channel, StreamInput::Payload(p)) => {
                pair.server.session.send(now, channel, p).unwrap()
            }
            Observed::Item(channel, StreamInput::End(_)) => {
                pair.server.session.close_send(now, channel, None).unwrap();
                pair.server.session.release(channel);
            }
            Observed::Event(_) => {}
        }
    }
}

#[test]
fn many_clients_many_streams_echo() {
    for codec in CODECS {
        let mut net = net(codec, 4);
        let now = net.now();
        let mut opened: Vec<(usize, Uuid)> = Vec::new();
        for (i, pair) in net.pairs.iter_mut().enumerate() {
            for s in 0..3u8 {
                let id = pair.client.session.open_stream(now, STORE, vec![b'r', s]).unwrap();
                for m in 0..3u8 {
                    pair.client.session.send(now, id, vec![b'm', s, m]).unwrap();
                }
                pair.client.session.close_send(now, id, None).unwrap();
                opened.push((i, id));
            }
        }
        let done = |net: &MuxNet| opened.iter().all(|(i, id)| net.pairs[*i].client.end(*id).is_some());
        while !done(&net) {
            assert!(net.step(), "{codec:?}: stalled");
            let now = net.now();
            net.pairs.iter_mut().for_each(|p| echo(p, now));
        }
        for (i, id) in &opened {
            let pair = &net.pairs[*i];
            let sent: Vec<&[u8]> = pair.server.payloads(*id);
            assert_eq!(pair.client.payloads(*id), sent, "echoed in order");
            assert_eq!(sent.len(), 4);
            assert_eq!(pair.client.end(*id), Some(&StreamEnd::Finished));
            assert_eq!(pair.server.end(*id), Some(&StreamEnd::Finished));
            assert_eq!(pair.client.sent_frames(*id), 5, "Sent credit covers the open, 3 sends and the close");
        }
        for (i, id) in &opened {
            net.pairs[*i].client.session.release(*id);
        }
        for pair in &net.pairs {
            assert_eq!((pair.client.session.stream_count(), pair.server.session.stream_count()), (0, 0));
            assert_eq!(pair.server.session.tombstone_count(), 0, "every stream was closed by both sides");
            assert_eq!(pair.client.session.tombstone_count(), 0);
        }
    }
}

#[test]
fn a_slow_stream_does_not_block_a_fast_one() {
    for codec in CODECS {
        let mut net = net(codec, 1);
        let now = net.now();
        let pair = net.pair(0);
        let slow = pair.client.session.open_stream(now, STORE, b"slow".to_vec()).unwrap();
        let fast = pair.client.session.open_stream(now, STORE, b"fast".to_vec()).unwrap();
        pair.server.held.insert(slow);
        for i in 0..100u8 {
            pair.client.session.send(now, slow, vec![i]).unwrap();
            pair.client.session.send(now, fast, vec![i]).unwrap();
        }
        net.settle();
        let pair = net.pair(0);
        assert_eq!(pair.server.payloads(fast).len(), 101, "{codec:?}: the fast stream got everything");
        assert!(pair.server.payloads(slow).is_empty());
        assert_eq!(pair.server.session.stream_info(slow).unwrap().queued_payloads, 101);
        assert_eq!(pair.server.recv_all(slow), 101, "the slow reader catches up later, nothing lost");
        assert!(pair.server.aborted(slow).is_none());
    }
}

#[test]
fn overload_closes_only_the_slow_stream() {
    for codec in CODECS {
        let mut net = MuxNet::new(MuxNetConfig {
            codec,
            server_config: MuxConfig { stream_queue_messages: 8, ..MuxConfig::default() },
            ..MuxNetConfig::default()
        });
        let now = net.now();
        let pair = net.pair(0);
        let slow = pair.client.session.open_stream(now, STORE, b"slow".to_vec()).unwrap();
        let fast = pair.client.session.open_stream(now, STORE, b"fast".to_vec()).unwrap();
        pair.server.held.insert(slow);
        for i in 0..20u8 {
            pair.client.session.send(now, slow, vec![i]).unwrap();
            pair.client.session.send(now, fast, vec![i]).unwrap();
        }
        net.settle();
        let pair = net.pair(0);
        assert_eq!(pair.server.aborted(slow), Some(&EndReason::Overloaded));
        assert_eq!(pair.server.aborted(fast), None);
        assert_eq!(pair.server.payloads(fast).len(), 21, "{codec:?}");
        let expected = EndReason::RemoteError(EndReason::Overloaded.to_string());
        assert_eq!(pair.client.end(slow), Some(&StreamEnd::Failed(expected)));
        assert_eq!(pair.client.end(fast), None);
        assert_eq!(pair.server.session.stream_count(), 1);
    }
}

#[test]
fn heartbeats_keep_an_idle_connection_alive() {
    let mut net = net(Codec::Json, 2);
    let now = net.now();
    let id = net.pair(0).client.session.open_stream(now, STORE, b"subscribe".to_vec()).unwrap();
    net.run_for(Millis::from_secs(600));
    for pair in &net.pairs {
        assert_eq!(pair.client.shutdown_reason(), None);
        assert_eq!(pair.server.shutdown_reason(), None);
        assert!(pair.to_server.sent >= 20 && pair.to_client.sent >= 20, "pings and pongs flowed both ways");
    }
    assert_eq!(net.pairs[0].server.session.stream_count(), 1);
    assert!(net.pairs[0].client.session.stream_info(id).is_some());
}

#[test]
fn a_dead_transport_times_every_stream_out_on_both_sides() {
    for codec in CODECS {
        let mut net = net(codec, 1);
        let now = net.now();
        let pair = net.pair(0);
        let ids: Vec<Uuid> =
            (0..3).map(|_| pair.client.session.open_stream(now, STORE, b"req".to_vec()).unwrap()).collect();
        net.settle();
        let pair = net.pair(0);
        // The network silently swallows everything from now on (no close ever arrives).
        let dead = LinkConfig { latency: Millis(5), drop_probability: 1.0 };
        pair.to_server.set_config(dead);
        pair.to_client.set_config(dead);
        net.run_for(Millis::from_secs(300));
        let pair = net.pair(0);
        for end in [&pair.client, &pair.server] {
            assert_eq!(end.shutdown_reason(), Some(&EndReason::HeartbeatTimeout), "{codec:?}");
            for id in &ids {
                assert_eq!(end.aborted(*id), Some(&EndReason::HeartbeatTimeout));
            }
        }
    }
}

#[test]
fn server_shutdown_ends_client_streams_with_muxer_closed() {
    let mut net = net(Codec::Cbor, 1);
    let now = net.now();
    let id = net.pair(0).client.session.open_stream(now, STORE, b"req".to_vec()).unwrap();
    net.settle();
    let now = net.now();
    net.pair(0).server.session.shutdown(now, EndReason::ShuttingDown);
    net.settle();
    let pair = net.pair(0);
    assert_eq!(pair.server.aborted(id), Some(&EndReason::ShuttingDown));
    assert_eq!(pair.server.shutdown_reason(), Some(&EndReason::ShuttingDown));
    // The close frame arrives before the socket closes, so the client sees Go's benign reason.
    assert_eq!(pair.client.aborted(id), Some(&EndReason::MuxerClosed));
    assert_eq!(pair.client.shutdown_reason(), Some(&EndReason::MuxerClosed));
    assert!(pair.to_client.is_closed() && pair.to_server.is_closed(), "both adapters closed their sockets");
}

#[test]
fn a_broken_connection_aborts_with_the_transport_reason() {
    let mut net = net(Codec::Json, 2);
    let now = net.now();
    let a = net.pair(0).client.session.open_stream(now, STORE, b"req".to_vec()).unwrap();
    let b = net.pair(1).client.session.open_stream(now, STORE, b"req".to_vec()).unwrap();
    net.settle();
    net.disconnect(0);
    net.settle();
    assert_eq!(net.pairs[0].client.aborted(a), Some(&EndReason::MuxerClosed));
    assert_eq!(net.pairs[0].server.aborted(a), Some(&EndReason::MuxerClosed));
    assert_eq!(net.pairs[1].client.aborted(b), None, "other connections are unaffected");
    assert_eq!(net.pairs[1].server.session.stream_count(), 1);
}

#[test]
fn access_denied_reaches_the_client_as_a_remote_error() {
    for codec in CODECS {
        let mut net = MuxNet::new(MuxNetConfig { codec, scopes: only(STORE), ..MuxNetConfig::default() });
        let now = net.now();
        let pair = net.pair(0);
        let denied = pair.client.session.open_stream(now, OTHER_STORE, b"req".to_vec()).unwrap();
        let allowed = pair.client.session.open_stream(now, STORE, b"req".to_vec()).unwrap();
        net.settle();
        let pair = net.pair(0);
        assert_eq!(
            pair.client.end(denied),
            Some(&StreamEnd::Failed(EndReason::RemoteError("access denied".into())))
        );
        assert_eq!(pair.server.opened(), vec![allowed], "{codec:?}: the denied stream never existed");
        assert_eq!(pair.to_client.sent, 1, "exactly one frame back: the error");
    }
}

#[test]
fn a_rejected_stream_fails_on_the_client() {
    let mut net = net(Codec::Json, 1);
    let now = net.now();
    let id = net.pair(0).client.session.open_stream(now, STORE, b"req".to_vec()).unwrap();
    net.settle();
    let now = net.now();
    net.pair(0).server.session.reject(now, id, &EndReason::StoreUnavailable);
    net.settle();
    let pair = net.pair(0);
    assert_eq!(
        pair.client.end(id),
        Some(&StreamEnd::Failed(EndReason::RemoteError("store unavailable".into())))
    );
    // The client's late data is dropped by the server's tombstone.
    let now = net.now();
    net.pair(0).client.session.send(now, id, b"late".to_vec()).unwrap();
    net.settle();
    assert_eq!(net.pairs[0].server.opened(), vec![id], "not reopened");
}
