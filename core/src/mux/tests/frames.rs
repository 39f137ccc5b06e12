//! Connection-level frames: ping/pong, close, unknown control types, malformed and oversized frames,
//! and the exact bytes Go expects.

use alloc::vec;

use super::*;
use crate::mux::{EndReason, MuxError};

#[test]
fn defaults_match_go() {
    let c = MuxConfig::default();
    assert_eq!(c.limits, Limits { max_frame: 8 << 20, max_payload: 6 << 20 });
    assert_eq!(c.heartbeat_interval, Millis(30_000));
    assert_eq!(c.heartbeat_jitter, Millis(5_000));
    assert_eq!(c.idle_timeout, Millis(90_000));
    assert_eq!(c.max_streams, 0);
    assert_eq!(c.stream_queue_messages, 8192);
    assert_eq!(c.stream_queue_bytes, 16 << 20);
    assert_eq!(c.connection_queue_bytes, 64 << 20);
    assert_eq!(c.tombstone_capacity, 1024);
    assert_eq!(c.tombstone_ttl, Millis(60_000));
}

#[test]
fn ping_is_answered_with_a_pong_and_refreshes_activity() {
    for codec in CODECS {
        let mut s = server(codec);
        s.handle_frame(T0 + Millis(5), &control(codec, ControlType::Ping));
        assert_eq!(s.last_activity(), T0 + Millis(5));
        assert!(s.has_transmit());
        let sent = transmits(&mut s);
        assert_eq!(sent, vec![Frame::control(ControlType::Pong)], "{codec:?}: nil ids, null payload");
        assert!(events(&mut s).is_empty());
    }
    let mut s = server(Codec::Json);
    s.handle_frame(T0, &control(Codec::Json, ControlType::Ping));
    assert_eq!(
        s.poll_transmit().unwrap(),
        br#"{"ControlType":"pong","store_id":"00000000-0000-0000-0000-000000000000","channel_id":"00000000-0000-0000-0000-000000000000","payload":null}"#
    );
}

#[test]
fn unanswered_pings_are_coalesced_into_one_pong() {
    let mut s = server(Codec::Json);
    for _ in 0..100 {
        s.handle_frame(T0, &control(Codec::Json, ControlType::Ping));
    }
    assert_eq!(transmits(&mut s).len(), 1, "a pong only proves liveness; one is enough");
}

#[test]
fn pong_and_unknown_control_types_only_refresh_activity() {
    for codec in CODECS {
        let mut s = server(codec);
        s.handle_frame(T0 + Millis(1), &control(codec, ControlType::Pong));
        assert_eq!(s.last_activity(), T0 + Millis(1));
        s.handle_frame(T0 + Millis(2), &control(codec, ControlType::Unknown("hello".into())));
        assert_eq!(s.last_activity(), T0 + Millis(2));
        assert!(!s.has_transmit());
        assert!(events(&mut s).is_empty());
        assert!(!s.is_shut_down());
    }
}

#[test]
fn received_close_shuts_down_without_answering() {
    for codec in CODECS {
        let mut s = server(codec);
        open(&mut s, CHANNEL, b"req");
        s.send(T0, CHANNEL, b"queued".to_vec()).unwrap();
        s.handle_frame(T0, &control(codec, ControlType::Close));
        assert!(s.is_shut_down());
        assert_eq!(
            events(&mut s),
            vec![
                MuxEvent::Aborted { channel: CHANNEL, reason: EndReason::MuxerClosed },
                MuxEvent::Shutdown { reason: EndReason::MuxerClosed },
            ]
        );
        assert!(!s.has_transmit(), "{codec:?}: no close back, nothing more to a peer that is gone");
        assert_eq!(s.send(T0, CHANNEL, vec![1]), Err(MuxError::ShutDown));
        assert_eq!(MuxError::ShutDown.to_string(), "muxer closed");
        s.handle_frame(T0, &control(codec, ControlType::Ping));
        assert!(!s.has_transmit(), "frames after shutdown are ignored");
        assert_eq!(s.poll_timeout(), None);
    }
}

#[test]
fn undecodable_frame_shuts_down_and_sends_close() {
    for (codec, garbage) in [(Codec::Json, &b"{not json"[..]), (Codec::Cbor, &[0xff, 0x00][..])] {
        let mut s = server(codec);
        open(&mut s, CHANNEL, b"req");
        s.handle_frame(T0, garbage);
        let evs = events(&mut s);
        assert_eq!(evs.len(), 2, "{evs:?}");
        let MuxEvent::Shutdown { reason } = &evs[1] else { panic!("{evs:?}") };
        assert!(
            matches!(reason, EndReason::Malformed(text) if text.starts_with("malformed message")),
            "{codec:?}: {reason}"
        );
        assert!(
            matches!(&evs[0], MuxEvent::Aborted { channel, reason: r } if *channel == CHANNEL && r == reason)
        );
        assert_eq!(transmits(&mut s), vec![Frame::control(ControlType::Close)]);
    }
}

#[test]
fn frames_over_the_limits_shut_the_session_down() {
    for codec in CODECS {
        // Multiples of 3, so the JSON base64 length states the decoded size exactly.
        let limits = Limits { max_frame: 300, max_payload: 42 };
        let mut s = server_with(codec, MuxConfig { limits, ..quiet() }, StoreScopes::All);
        s.handle_frame(T0, &vec![b' '; 301]);
        assert_eq!(events(&mut s), vec![MuxEvent::Shutdown { reason: EndReason::FrameTooLarge }]);
        assert_eq!(transmits(&mut s), vec![Frame::control(ControlType::Close)]);

        let mut s = server_with(codec, MuxConfig { limits, ..quiet() }, StoreScopes::All);
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, &[7; 42]));
        assert_eq!(s.stream_count(), 1, "{codec:?}: a payload at the limit is fine");
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, &[7; 45]));
        let evs = events(&mut s);
        assert_eq!(evs.last(), Some(&MuxEvent::Shutdown { reason: EndReason::PayloadTooLarge }), "{codec:?}");
        assert!(evs.contains(&MuxEvent::Aborted { channel: CHANNEL, reason: EndReason::PayloadTooLarge }));
    }
}

#[test]
fn sends_over_the_limits_fail_and_leave_the_stream_usable() {
    for codec in CODECS {
        // A multiple of 3, so the JSON base64 length states the decoded size exactly.
        let limits = Limits { max_frame: 8 << 20, max_payload: 99 };
        let mut c = MuxSession::new(Role::Client, codec, MuxConfig { limits, ..quiet() }, T0, 1);
        assert_eq!(
            c.open_stream(T0, STORE, vec![0; 100]),
            Err(MuxError::PayloadTooLarge { len: 100, limit: 99 })
        );
        assert_eq!(c.stream_count(), 0, "no stream for a refused open");
        let id = c.open_stream(T0, STORE, vec![0; 10]).unwrap();
        let err = c.send(T0, id, vec![0; 100]).unwrap_err();
        assert_eq!(err, MuxError::PayloadTooLarge { len: 100, limit: 99 });
        assert_eq!(err.to_string(), "muxer payload too large");
        c.send(T0, id, vec![0; 99]).unwrap();
        assert_eq!(transmits(&mut c).len(), 2, "{codec:?}: the open and the 99-byte payload");
    }
    // A payload under max_payload whose frame would exceed max_frame is refused too: the peer would shut
    // the whole connection down on it (6 MiB of payload is 8 MiB of base64 plus the wrapper).
    let limits = Limits { max_frame: 250, max_payload: 99 };
    let mut c = MuxSession::new(Role::Client, Codec::Json, MuxConfig { limits, ..quiet() }, T0, 1);
    let id = c.open_stream(T0, STORE, vec![]).unwrap();
    c.send(T0, id, vec![0; 60]).unwrap();
    match c.send(T0, id, vec![0; 99]) {
        Err(MuxError::PayloadTooLarge { len, limit: 250 }) => assert!(len > 250),
        other => panic!("{other:?}"),
    }
    let defaults = MuxConfig::default().limits;
    let mut c = MuxSession::new(Role::Client, Codec::Json, quiet(), T0, 1);
    let id = c.open_stream(T0, STORE, vec![]).unwrap();
    assert!(matches!(
        c.send(T0, id, vec![0; defaults.max_payload]),
        Err(MuxError::PayloadTooLarge { limit, .. }) if limit == defaults.max_frame
    ));
}

#[test]
fn wire_bytes_match_the_spec_examples() {
    // Access denied (PROTOCOL.md §2.11), with the full ids the example abbreviates.
    let mut s = server_with(Codec::Json, quiet(), only(OTHER_STORE));
    s.handle_frame(T0, &data(Codec::Json, STORE, CHANNEL, b"{}"));
    assert_eq!(
        s.poll_transmit().unwrap(),
        br#"{"ControlType":"error","store_id":"6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b","channel_id":"0b7e3c1a-9d2f-4c6e-a1b3-5d7f9e1c3a5b","payload":"eyJ0eXBlIjoibXV4OjplcnJvciIsImVyciI6ImFjY2VzcyBkZW5pZWQifQ=="}"#
    );
    // A stream's end and a produce failure.
    let mut s = server(Codec::Json);
    open(&mut s, CHANNEL, b"{}");
    s.close_send(T0, CHANNEL, None).unwrap();
    assert_eq!(
        s.poll_transmit().unwrap(),
        br#"{"ControlType":"data","store_id":"6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b","channel_id":"0b7e3c1a-9d2f-4c6e-a1b3-5d7f9e1c3a5b","payload":"eyJ0eXBlIjoibXV4OjpjbG9zZSJ9"}"#
    );
    let mut s = server(Codec::Json);
    open(&mut s, CHANNEL, b"{}");
    s.close_send(T0, CHANNEL, Some("sequence gap: expected 3, got 4")).unwrap();
    let frame = s.poll_transmit().unwrap();
    assert!(frame.ends_with(
        br#""payload":"eyJ0eXBlIjoibXV4OjpjbG9zZSIsImVyciI6InNlcXVlbmNlIGdhcDogZXhwZWN0ZWQgMywgZ290IDQifQ=="}"#
    ));
    // The heartbeat.
    let config = MuxConfig { heartbeat_jitter: Millis::ZERO, ..MuxConfig::default() };
    let mut c = MuxSession::new(Role::Client, Codec::Json, config, T0, 1);
    c.handle_timeout(T0 + Millis(30_000));
    assert_eq!(
        c.poll_transmit().unwrap(),
        br#"{"ControlType":"ping","store_id":"00000000-0000-0000-0000-000000000000","channel_id":"00000000-0000-0000-0000-000000000000","payload":null}"#
    );
}
