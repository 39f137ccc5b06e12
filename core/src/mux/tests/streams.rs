//! Logical streams: opening, FIFO delivery, remote ends, half-close, release, reject, tombstones, the
//! stream cap, scope checks and the client role.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::mux::{EndReason, MuxError};

#[test]
fn first_data_frame_opens_a_stream_with_its_payload_queued() {
    for codec in CODECS {
        let mut s = server(codec);
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, b"envelope"));
        assert_eq!(
            events(&mut s),
            vec![
                MuxEvent::Opened { channel: CHANNEL, store_id: STORE },
                MuxEvent::Readable { channel: CHANNEL }
            ]
        );
        assert_eq!(s.stream_count(), 1);
        let info = s.stream_info(CHANNEL).unwrap();
        assert_eq!((info.store_id, info.queued_payloads, info.queued_bytes), (STORE, 1, 8));
        assert_eq!(items(&mut s, CHANNEL), vec![payload(b"envelope")]);
        assert_eq!(s.queued_inbound_bytes(), 0);
    }
}

#[test]
fn per_channel_fifo_a_b_c() {
    for codec in CODECS {
        let mut s = server(codec);
        for p in [b"a", b"b", b"c"] {
            s.handle_frame(T0, &data(codec, STORE, CHANNEL, p));
        }
        let readable = events(&mut s).into_iter().filter(|e| matches!(e, MuxEvent::Readable { .. })).count();
        assert_eq!(readable, 1, "{codec:?}: Readable only when the queue becomes non-empty");
        assert_eq!(items(&mut s, CHANNEL), vec![payload(b"a"), payload(b"b"), payload(b"c")]);
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, b"d"));
        assert_eq!(events(&mut s), vec![MuxEvent::Readable { channel: CHANNEL }], "again after draining");
    }
}

#[test]
fn readable_is_not_repeated_while_one_is_pending() {
    let mut s = server(Codec::Json);
    s.handle_frame(T0, &data(Codec::Json, STORE, CHANNEL, b"a"));
    // The application pops without draining events first: the pending Readable still covers new items.
    assert_eq!(s.recv(CHANNEL), Some(payload(b"a")));
    s.handle_frame(T0, &data(Codec::Json, STORE, CHANNEL, b"b"));
    assert_eq!(
        events(&mut s),
        vec![MuxEvent::Opened { channel: CHANNEL, store_id: STORE }, MuxEvent::Readable { channel: CHANNEL }]
    );
    assert_eq!(items(&mut s, CHANNEL), vec![payload(b"b")]);
}

#[test]
fn peer_close_after_data_delivers_data_then_a_clean_end() {
    for codec in CODECS {
        let mut s = server(codec);
        open(&mut s, CHANNEL, b"first");
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, b"second"));
        s.handle_frame(T0, &ctl(codec, CHANNEL, StreamControl::close()));
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, b"after the end"));
        assert_eq!(items(&mut s, CHANNEL), vec![payload(b"first"), payload(b"second"), finished()]);
        assert_eq!(s.recv(CHANNEL), None);
        // Half-closed by the peer: we can still send, and the stream stays registered until released.
        assert!(s.stream_info(CHANNEL).unwrap().peer_closed);
        s.send(T0, CHANNEL, b"status".to_vec()).unwrap();
        s.close_send(T0, CHANNEL, None).unwrap();
        s.release(CHANNEL);
        assert_eq!(s.stream_count(), 0);
        assert_eq!(s.tombstone_count(), 0, "{codec:?}: the peer closed, so no tombstone is needed");
        let sent: Vec<_> = transmits(&mut s).iter().map(|f| f.payload.clone().unwrap()).collect();
        assert_eq!(sent, vec![b"status".to_vec(), StreamControl::close().encode(codec)]);
    }
}

#[test]
fn remote_ends_map_to_go_reader_errors() {
    for codec in CODECS {
        let weird = StreamControl::Unknown { kind: "mux::weird".into(), err: "y".into() };
        let cases = [
            (ctl(codec, CHANNEL, StreamControl::close_with("boom")), EndReason::RemoteClosed("boom".into())),
            (ctl(codec, CHANNEL, StreamControl::error("oops")), EndReason::RemoteError("oops".into())),
            (
                ctl(codec, CHANNEL, weird),
                EndReason::UnknownControl { kind: "mux::weird".into(), err: "y".into() },
            ),
            (error_frame(codec, CHANNEL, "access denied"), EndReason::RemoteError("access denied".into())),
        ];
        for (frame, reason) in cases {
            let mut s = server(codec);
            open(&mut s, CHANNEL, b"data");
            s.handle_frame(T0, &frame);
            s.handle_frame(T0, &data(codec, STORE, CHANNEL, b"dropped"));
            assert_eq!(items(&mut s, CHANNEL), vec![payload(b"data"), failed(reason.clone())], "{codec:?}");
            assert_eq!(s.stream_count(), 1, "ended for receiving, still registered");
        }
    }
}

#[test]
fn error_frame_with_a_malformed_payload_still_ends_the_stream() {
    for codec in CODECS {
        let mut s = server(codec);
        open(&mut s, CHANNEL, b"data");
        s.handle_frame(T0, &codec.encode_frame(&Frame::error(STORE, CHANNEL, b"garbage".to_vec())));
        assert_eq!(
            items(&mut s, CHANNEL),
            vec![payload(b"data"), failed(EndReason::RemoteError(String::new()))]
        );
    }
}

#[test]
fn domain_objects_with_a_type_field_are_data() {
    let mut s = server(Codec::Json);
    open(&mut s, CHANNEL, br#"{"type":"close","data":"legit"}"#);
    assert_eq!(items(&mut s, CHANNEL), vec![payload(br#"{"type":"close","data":"legit"}"#)]);
}

#[test]
fn stream_control_for_unknown_channels_is_ignored() {
    for codec in CODECS {
        let mut s = server(codec);
        s.handle_frame(T0, &ctl(codec, CHANNEL, StreamControl::close()));
        s.handle_frame(T0, &ctl(codec, ch(1), StreamControl::error("late")));
        s.handle_frame(T0, &error_frame(codec, ch(2), "late"));
        assert_eq!(s.stream_count(), 0, "{codec:?}: no throw-away stream");
        assert!(events(&mut s).is_empty());
        assert!(!s.has_transmit());
        assert_eq!(s.tombstone_count(), 0);
    }
}

#[test]
fn access_is_checked_on_every_data_frame() {
    for codec in CODECS {
        let mut s = server_with(codec, quiet(), only(STORE));
        s.handle_frame(T0, &data(codec, OTHER_STORE, CHANNEL, b"{}"));
        assert_eq!(s.stream_count(), 0, "the stream is never created");
        assert!(events(&mut s).is_empty());
        let sent = transmits(&mut s);
        assert_eq!(sent.len(), 1, "{codec:?}: exactly one error frame");
        assert_eq!(sent[0].control, ControlType::Error);
        assert_eq!((sent[0].store_id, sent[0].channel_id), (OTHER_STORE, CHANNEL), "same ids");
        assert_eq!(control_of(codec, &sent[0]), Some(StreamControl::error("access denied")));

        // A registered stream: a later frame naming a store outside the scopes is refused on its own.
        open(&mut s, ch(1), b"ok");
        s.handle_frame(T0, &data(codec, OTHER_STORE, ch(1), b"sneaky"));
        let sent = transmits(&mut s);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].store_id, sent[0].channel_id), (OTHER_STORE, ch(1)));
        assert_eq!(items(&mut s, ch(1)), vec![payload(b"ok")], "the denied frame was dropped");
        assert_eq!(s.stream_count(), 1);
        assert_eq!(s.counters(), MuxCounters { denied_frames: 2, ..MuxCounters::default() });
    }
}

#[test]
fn stream_cap_rejects_with_an_error_frame_and_a_tombstone() {
    for codec in CODECS {
        let mut s = server_with(codec, MuxConfig { max_streams: 1, ..quiet() }, StoreScopes::All);
        open(&mut s, ch(1), b"a");
        s.handle_frame(T0, &data(codec, STORE, ch(2), b"b"));
        assert_eq!(s.stream_count(), 1);
        assert!(events(&mut s).is_empty(), "{codec:?}: no Opened for a refused stream");
        let sent = transmits(&mut s);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].control.clone(), sent[0].channel_id), (ControlType::Error, ch(2)));
        assert_eq!(control_of(codec, &sent[0]), Some(StreamControl::error("too many active streams")));
        assert!(s.is_tombstoned(ch(2)));
        assert_eq!(s.counters(), MuxCounters { refused_streams: 1, ..MuxCounters::default() });
        // The refused stream's next frames are dropped silently, even once there is room.
        s.handle_frame(T0, &ctl(codec, ch(1), StreamControl::close()));
        s.release(ch(1));
        s.handle_frame(T0, &data(codec, STORE, ch(2), b"more"));
        assert!(!s.has_transmit());
        assert_eq!(s.stream_count(), 0);
        // A new channel fits again.
        events(&mut s);
        open(&mut s, ch(3), b"c");
        assert_eq!(s.stream_count(), 1);
    }
}

#[test]
fn tombstones_keep_the_newest_up_to_capacity() {
    let mut s = server_with(Codec::Json, MuxConfig { tombstone_capacity: 3, ..quiet() }, StoreScopes::All);
    for n in 1..=5 {
        open(&mut s, ch(n), b"x");
        s.reject(T0 + Millis(n as u64), ch(n), &EndReason::StoreUnavailable);
    }
    assert_eq!(s.tombstone_count(), 3);
    for n in 1..=5 {
        s.handle_frame(T0 + Millis(10), &data(Codec::Json, STORE, ch(n), b"late"));
    }
    let opened: Vec<_> = events(&mut s)
        .into_iter()
        .filter_map(|e| match e {
            MuxEvent::Opened { channel, .. } => Some(channel),
            _ => None,
        })
        .collect();
    assert_eq!(opened, vec![ch(1), ch(2)], "the two oldest tombstones were pruned");
}

#[test]
fn tombstones_expire_by_age_and_the_id_becomes_a_new_stream() {
    let mut s =
        server_with(Codec::Cbor, MuxConfig { tombstone_ttl: Millis(10), ..quiet() }, StoreScopes::All);
    open(&mut s, CHANNEL, b"x");
    s.reject(T0, CHANNEL, &EndReason::StoreUnavailable);
    transmits(&mut s);
    s.handle_frame(T0 + Millis(10), &data(Codec::Cbor, STORE, CHANNEL, b"still dead"));
    assert_eq!(s.stream_count(), 0);
    s.handle_frame(T0 + Millis(11), &data(Codec::Cbor, STORE, CHANNEL, b"new"));
    assert_eq!(s.stream_count(), 1, "an expired tombstone behaves as unknown");
    assert_eq!(s.tombstone_count(), 0, "registering the id deleted its tombstone");
    assert_eq!(items(&mut s, CHANNEL), vec![payload(b"new")]);
}

#[test]
fn handle_timeout_prunes_expired_tombstones() {
    let mut s =
        server_with(Codec::Json, MuxConfig { tombstone_ttl: Millis(10), ..quiet() }, StoreScopes::All);
    open(&mut s, CHANNEL, b"x");
    s.reject(T0, CHANNEL, &EndReason::StoreUnavailable);
    assert_eq!(s.tombstone_count(), 1);
    s.handle_timeout(T0 + Millis(11));
    assert_eq!(s.tombstone_count(), 0);
}

#[test]
fn a_released_channel_is_free_at_once() {
    for codec in CODECS {
        let mut s = server(codec);
        open(&mut s, CHANNEL, b"req");
        s.close_send(T0, CHANNEL, Some("invalid request")).unwrap();
        s.release(CHANNEL);
        assert!(!s.is_tombstoned(CHANNEL), "{codec:?}: no tombstone for a channel closed normally (Go)");
        assert_eq!(s.recv(CHANNEL), None);
        // Our close still goes out after the release (close send and release).
        let sent = transmits(&mut s);
        assert_eq!(control_of(codec, &sent[0]), Some(StreamControl::close_with("invalid request")));
        // The peer may reuse the id for its next request at once: a new stream.
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, b"next request"));
        assert_eq!(
            events(&mut s),
            [MuxEvent::Opened { channel: CHANNEL, store_id: STORE }, MuxEvent::Readable { channel: CHANNEL }]
        );
        assert_eq!(s.recv(CHANNEL), Some(StreamInput::Payload(b"next request".to_vec())));
        // A late end of the old stream is not a stream of its own.
        s.release(CHANNEL);
        s.handle_frame(T0, &ctl(codec, CHANNEL, StreamControl::close()));
        assert!(events(&mut s).is_empty());
        assert_eq!(s.stream_count(), 0);
    }
}

#[test]
fn reject_sends_one_error_frame_and_tombstones() {
    for codec in CODECS {
        let mut s = server(codec);
        open(&mut s, CHANNEL, b"req");
        s.send(T0, CHANNEL, b"unsent".to_vec()).unwrap();
        s.reject(T0, CHANNEL, &EndReason::StoreUnavailable);
        assert_eq!(s.stream_count(), 0);
        assert!(s.is_tombstoned(CHANNEL));
        let sent = transmits(&mut s);
        assert_eq!(sent.len(), 1, "{codec:?}: unsent data of a rejected stream is dropped");
        assert_eq!((sent[0].control.clone(), sent[0].store_id), (ControlType::Error, STORE));
        assert_eq!(control_of(codec, &sent[0]), Some(StreamControl::error("store unavailable")));
        assert_eq!(s.send(T0, CHANNEL, vec![]), Err(MuxError::UnknownStream));
        s.handle_frame(T0, &data(codec, STORE, CHANNEL, b"late"));
        assert!(events(&mut s).is_empty());
        assert!(events(&mut s).is_empty(), "no Sent for a rejected stream");
    }
}

#[test]
fn unknown_streams_are_refused_without_side_effects() {
    let mut s = server(Codec::Json);
    assert_eq!(s.send(T0, CHANNEL, vec![]), Err(MuxError::UnknownStream));
    assert_eq!(s.close_send(T0, CHANNEL, None), Err(MuxError::UnknownStream));
    assert_eq!(MuxError::UnknownStream.to_string(), "unknown stream");
    assert_eq!(s.recv(CHANNEL), None);
    s.release(CHANNEL);
    s.reject(T0, CHANNEL, &EndReason::StoreUnavailable);
    assert!(!s.has_transmit());
    assert_eq!(s.tombstone_count(), 0);
    assert!(events(&mut s).is_empty());
}

#[test]
fn half_close_then_keep_receiving_and_sending() {
    for codec in CODECS {
        // Produce: the client sends records, half-closes, and keeps reading statuses.
        let mut c = client(codec);
        let mut s = server(codec);
        let id = c.open_stream(T0, STORE, b"produce".to_vec()).unwrap();
        c.send(T0, id, b"record 1".to_vec()).unwrap();
        c.close_send(T0, id, None).unwrap();
        assert_eq!(c.send(T0, id, vec![]), Err(MuxError::SendClosed));
        assert_eq!(c.close_send(T0, id, None), Err(MuxError::SendClosed));
        for f in core::iter::from_fn(|| c.poll_transmit()) {
            s.handle_frame(T0, &f);
        }
        events(&mut s);
        assert_eq!(items(&mut s, id), vec![payload(b"produce"), payload(b"record 1"), finished()]);
        // The server answers after the client's half-close, then closes and releases.
        s.send(T0, id, b"status 1".to_vec()).unwrap();
        s.close_send(T0, id, None).unwrap();
        s.release(id);
        for f in core::iter::from_fn(|| s.poll_transmit()) {
            c.handle_frame(T0, &f);
        }
        assert!(events(&mut c).contains(&MuxEvent::Readable { channel: id }));
        assert_eq!(items(&mut c, id), vec![payload(b"status 1"), finished()], "{codec:?}");
        c.release(id);
        assert_eq!((c.stream_count(), s.stream_count()), (0, 0));
        assert_eq!((c.tombstone_count(), s.tombstone_count()), (0, 0), "both sides saw the other's close");
    }
}

#[test]
fn close_send_with_an_empty_error_is_a_clean_close() {
    let mut c = client(Codec::Json);
    let id = c.open_stream(T0, STORE, vec![]).unwrap();
    c.close_send(T0, id, Some("")).unwrap();
    let sent = transmits(&mut c);
    assert_eq!(sent[1].payload.as_deref(), Some(&br#"{"type":"mux::close"}"#[..]));
}

#[test]
fn client_opens_streams_with_fresh_v4_ids() {
    for codec in CODECS {
        let mut c = client(codec);
        let a = c.open_stream(T0, STORE, b"req a".to_vec()).unwrap();
        let b = c.open_stream(T0, OTHER_STORE, b"req b".to_vec()).unwrap();
        assert_ne!(a, b);
        assert_eq!((a.get_version_num(), b.get_version_num()), (4, 4));
        assert_eq!(c.stream_count(), 2);
        assert!(events(&mut c).is_empty(), "no Opened for our own streams");
        let sent = transmits(&mut c);
        assert_eq!(
            sent,
            vec![Frame::data(STORE, a, b"req a".to_vec()), Frame::data(OTHER_STORE, b, b"req b".to_vec())]
        );
        // Same seed, same ids: simulations replay.
        let mut again = client(codec);
        assert_eq!(again.open_stream(T0, STORE, vec![]).unwrap(), a);
    }
    assert_eq!(server(Codec::Json).open_stream(T0, STORE, vec![]), Err(MuxError::NotClient));
}

#[test]
fn client_drops_frames_for_unknown_channels() {
    for codec in CODECS {
        let mut c = client(codec);
        c.handle_frame(T0, &data(codec, STORE, CHANNEL, b"unsolicited"));
        c.handle_frame(T0, &error_frame(codec, CHANNEL, "x"));
        assert_eq!(c.stream_count(), 0);
        assert!(events(&mut c).is_empty());
        assert!(!c.has_transmit());
        // A client allows every store on its own streams (the server decides access).
        let id = c.open_stream(T0, STORE, vec![]).unwrap();
        c.handle_frame(T0, &data(codec, OTHER_STORE, id, b"answer"));
        assert_eq!(items(&mut c, id), vec![payload(b"answer")]);
    }
}
