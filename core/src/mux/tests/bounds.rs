//! Bounded queues: inbound overload aborts only the overflowing stream, outbound frames are taken
//! round-robin with control frames first, `Sent` credit, and the control-frame cap.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::mux::{EndReason, MAX_QUEUED_CONTROL_FRAMES, OverloadPolicy, TimeoutReason};

fn overloaded(channel: Uuid) -> MuxEvent {
    MuxEvent::Aborted { channel, reason: EndReason::Overloaded }
}

#[test]
fn message_bound_aborts_only_the_slow_stream() {
    for codec in CODECS {
        let mut s = server_with(codec, MuxConfig { stream_queue_messages: 2, ..quiet() }, StoreScopes::All);
        let (slow, fast) = (ch(1), ch(2));
        open(&mut s, slow, b"1");
        open(&mut s, fast, b"1");
        assert_eq!(s.recv(fast), Some(payload(b"1")));
        s.handle_frame(T0, &data(codec, STORE, slow, b"2"));
        for p in [b"2", b"3", b"4"] {
            s.handle_frame(T0, &data(codec, STORE, fast, p));
            assert_eq!(s.recv(fast), Some(payload(p)), "the fast reader keeps up");
        }
        assert_eq!(
            events(&mut s),
            vec![MuxEvent::Readable { channel: fast }],
            "{codec:?}: at the bound is fine"
        );
        s.handle_frame(T0, &data(codec, STORE, slow, b"3"));
        assert_eq!(events(&mut s), vec![overloaded(slow)]);
        assert_eq!(s.counters().overloaded_streams, 1);
        assert_eq!(s.stream_count(), 1);
        assert!(s.is_tombstoned(slow));
        assert_eq!(s.recv(slow), None, "its queue is gone");
        let sent = transmits(&mut s);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].control.clone(), sent[0].channel_id), (ControlType::Error, slow));
        assert_eq!(
            control_of(codec, &sent[0]),
            Some(StreamControl::error("stream receive buffer overloaded"))
        );
        // The slow stream's in-flight frames are dropped; the fast one is untouched.
        s.handle_frame(T0, &data(codec, STORE, slow, b"4"));
        s.handle_frame(T0, &data(codec, STORE, fast, b"5"));
        assert_eq!(items(&mut s, fast), vec![payload(b"5")]);
        assert_eq!(s.stream_count(), 1);
    }
}

#[test]
fn byte_bound_aborts_the_stream() {
    let mut s = server_with(Codec::Json, MuxConfig { stream_queue_bytes: 10, ..quiet() }, StoreScopes::All);
    open(&mut s, CHANNEL, b"0123456789");
    s.handle_frame(T0, &data(Codec::Json, STORE, CHANNEL, b""));
    assert!(events(&mut s).is_empty(), "10 bytes fit");
    s.handle_frame(T0, &data(Codec::Json, STORE, CHANNEL, b"x"));
    assert_eq!(events(&mut s), vec![overloaded(CHANNEL)]);
    assert_eq!(s.queued_inbound_bytes(), 0);
}

#[test]
fn connection_bound_aborts_the_largest_stream() {
    let config = MuxConfig { connection_queue_bytes: 100, ..quiet() };
    let mut s = server_with(Codec::Cbor, config, StoreScopes::All);
    open(&mut s, ch(1), &[1; 60]);
    open(&mut s, ch(2), &[2; 30]);
    open(&mut s, ch(3), &[3; 10]);
    assert_eq!(s.queued_inbound_bytes(), 100);
    s.handle_frame(T0, &data(Codec::Cbor, STORE, ch(3), &[3; 5]));
    assert_eq!(events(&mut s), vec![overloaded(ch(1))], "the largest queue goes, not the newest");
    assert_eq!(s.queued_inbound_bytes(), 45);
    assert_eq!(items(&mut s, ch(3)), vec![payload(&[3; 10]), payload(&[3; 5])]);
    assert_eq!(s.stream_info(ch(2)).unwrap().queued_bytes, 30);
}

#[test]
fn the_end_marker_is_not_counted_against_the_bound() {
    let mut s = server_with(Codec::Json, MuxConfig { stream_queue_messages: 1, ..quiet() }, StoreScopes::All);
    open(&mut s, CHANNEL, b"only");
    s.handle_frame(T0, &ctl(Codec::Json, CHANNEL, StreamControl::close()));
    assert!(events(&mut s).is_empty());
    assert_eq!(items(&mut s, CHANNEL), vec![payload(b"only"), finished()]);
}

#[test]
fn an_opening_payload_over_the_bound_opens_then_aborts() {
    let mut s = server_with(Codec::Json, MuxConfig { stream_queue_bytes: 4, ..quiet() }, StoreScopes::All);
    s.handle_frame(T0, &data(Codec::Json, STORE, CHANNEL, b"too big"));
    assert_eq!(
        events(&mut s),
        vec![MuxEvent::Opened { channel: CHANNEL, store_id: STORE }, overloaded(CHANNEL)],
        "no Readable left for a stream that is gone"
    );
    assert_eq!(s.stream_count(), 0);
    assert_eq!(transmits(&mut s).len(), 1);
}

#[test]
fn outbound_is_round_robin_with_control_frames_first() {
    for codec in CODECS {
        let mut s = server_with(codec, quiet(), only(STORE));
        let (bulk, small) = (ch(1), ch(2));
        open(&mut s, bulk, b"req");
        open(&mut s, small, b"req");
        for i in 0..50u8 {
            s.send(T0, bulk, vec![i]).unwrap();
        }
        s.send(T0, small, b"small".to_vec()).unwrap();
        s.handle_frame(T0, &control(codec, ControlType::Ping));
        s.handle_frame(T0, &data(codec, OTHER_STORE, ch(3), b"denied"));
        assert_eq!(s.queued_data_frames(), 51);
        let sent = transmits(&mut s);
        assert_eq!(sent.len(), 53);
        assert_eq!(sent[0].control, ControlType::Pong);
        assert_eq!(sent[1].control, ControlType::Error);
        let order: Vec<Uuid> = sent[2..].iter().map(|f| f.channel_id).collect();
        assert_eq!(&order[..3], &[bulk, small, bulk], "{codec:?}: the small stream is not starved");
        let bulk_payloads: Vec<u8> = sent[2..]
            .iter()
            .filter(|f| f.channel_id == bulk)
            .map(|f| f.payload.as_ref().unwrap()[0])
            .collect();
        assert_eq!(bulk_payloads, (0..50).collect::<Vec<u8>>(), "per-stream order is kept");
    }
}

#[test]
fn sent_events_report_transmitted_frames_per_stream() {
    let mut c = client(Codec::Json);
    let a = c.open_stream(T0, STORE, b"a".to_vec()).unwrap();
    let b = c.open_stream(T0, STORE, b"b".to_vec()).unwrap();
    c.send(T0, a, b"a2".to_vec()).unwrap();
    c.close_send(T0, a, None).unwrap();
    assert_eq!(c.poll_timeout(), None, "pending transmits alone do not make the timer fire");
    assert_eq!(transmits(&mut c).len(), 4);
    assert_eq!(c.poll_timeout(), Some((T0, TimeoutReason::PendingEvents)));
    let mut sent = events(&mut c);
    sent.sort_by_key(|e| match e {
        MuxEvent::Sent { channel, .. } => *channel,
        _ => Uuid::nil(),
    });
    let mut expected = vec![
        MuxEvent::Sent { channel: a, frames: 3, charge: 0 },
        MuxEvent::Sent { channel: b, frames: 1, charge: 0 },
    ];
    expected.sort_by_key(|e| match e {
        MuxEvent::Sent { channel, .. } => *channel,
        _ => Uuid::nil(),
    });
    assert_eq!(sent, expected, "aggregated per channel, the close included");
    // Frames of a released stream still go out, but are nobody's credit.
    c.send(T0, b, b"last".to_vec()).unwrap();
    c.close_send(T0, b, None).unwrap();
    c.release(b);
    assert_eq!(transmits(&mut c).len(), 2);
    assert!(events(&mut c).is_empty());
    // Pending credit of a stream that goes away is discarded with it.
    c.send(T0, a, b"x".to_vec()).unwrap_err();
    let d = c.open_stream(T0, STORE, vec![]).unwrap();
    transmits(&mut c);
    c.release(d);
    assert!(events(&mut c).is_empty());
}

#[test]
fn error_frames_are_bounded_by_shutting_down() {
    let mut s = server_with(Codec::Json, quiet(), only(STORE));
    let denied = data(Codec::Json, OTHER_STORE, CHANNEL, b"{}");
    for _ in 0..MAX_QUEUED_CONTROL_FRAMES {
        s.handle_frame(T0, &denied);
    }
    assert_eq!(s.queued_error_frames(), MAX_QUEUED_CONTROL_FRAMES);
    assert!(!s.is_shut_down());
    // A peer that provokes errors without reading them does not grow the queue further.
    s.handle_frame(T0, &denied);
    assert!(s.is_shut_down());
    assert_eq!(s.queued_error_frames(), MAX_QUEUED_CONTROL_FRAMES);
    assert_eq!(events(&mut s), vec![MuxEvent::Shutdown { reason: EndReason::ControlOverloaded }]);
    let sent = transmits(&mut s);
    assert_eq!(sent.len(), MAX_QUEUED_CONTROL_FRAMES + 1);
    assert_eq!(sent.last().unwrap().control, ControlType::Close);
}

/// Go's server `close` policy: a stream over its bound is first only waited for (the session is
/// backlogged); after `threshold + 1` timeouts without the application taking anything it is closed
/// like with `Close`, while a stream that makes progress keeps its place.
#[test]
fn wait_then_close_closes_a_stream_that_stays_over_its_bound() {
    let policy = OverloadPolicy::GO_CLOSE;
    assert_eq!(policy.patience(), Some(Millis(400)));
    for codec in CODECS {
        let config = MuxConfig { stream_queue_messages: 2, overload: policy, ..quiet() };
        let mut s = server_with(codec, config, StoreScopes::All);
        let (stuck, slow) = (ch(1), ch(2));
        open(&mut s, stuck, b"1");
        open(&mut s, slow, b"1");
        events(&mut s);
        for p in [b"2", b"3"] {
            s.handle_frame(T0, &data(codec, STORE, stuck, p));
            s.handle_frame(T0, &data(codec, STORE, slow, p));
        }
        assert!(s.is_backlogged(), "{codec:?}: over the bound, the driver stops reading");
        assert_eq!(events(&mut s), vec![], "nothing is aborted yet");
        assert_eq!(s.poll_timeout(), Some((T0 + Millis(400), TimeoutReason::Overload)));
        // The slow stream's reader takes one item 300 ms later: its patience starts again.
        s.handle_timeout(T0 + Millis(300));
        assert_eq!(s.recv(slow), Some(payload(b"1")));
        s.handle_frame(T0 + Millis(300), &data(codec, STORE, slow, b"4"));
        s.handle_timeout(T0 + Millis(399));
        assert_eq!(events(&mut s), vec![], "{codec:?}: not before 400 ms");
        s.handle_timeout(T0 + Millis(400));
        assert_eq!(events(&mut s), vec![overloaded(stuck)], "{codec:?}");
        assert!(s.is_tombstoned(stuck));
        assert_eq!(s.counters().overloaded_streams, 1);
        let sent = transmits(&mut s);
        assert_eq!((sent[0].control.clone(), sent[0].channel_id), (ControlType::Error, stuck));
        assert_eq!(
            s.poll_timeout(),
            Some((T0 + Millis(700), TimeoutReason::Overload)),
            "the slow one's turn"
        );
        // It catches up in time: nothing more is closed.
        while s.recv(slow).is_some() {}
        assert!(!s.is_backlogged());
        assert_eq!(s.poll_timeout(), None);
        s.handle_timeout(T0 + Millis(800));
        assert_eq!(events(&mut s), vec![]);
        assert_eq!(s.stream_count(), 1);
    }
}

/// `Wait` never closes a stream, however long it stays over its bound.
#[test]
fn wait_never_closes_a_stream() {
    let config = MuxConfig { stream_queue_messages: 1, overload: OverloadPolicy::Wait, ..quiet() };
    let mut s = server_with(Codec::Json, config, StoreScopes::All);
    open(&mut s, ch(1), b"1");
    s.handle_frame(T0, &data(Codec::Json, STORE, ch(1), b"2"));
    events(&mut s);
    assert!(s.is_backlogged());
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(T0 + Millis(3_600_000));
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(s.stream_count(), 1);
}
