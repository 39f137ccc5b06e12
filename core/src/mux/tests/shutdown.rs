//! Connection shutdown: by the application, by the peer, by the transport.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::mux::MuxError;

#[test]
fn shutdown_aborts_every_stream_and_sends_close_after_queued_data() {
    for codec in CODECS {
        let mut s = server_with(codec, MuxConfig::default(), StoreScopes::All);
        open(&mut s, ch(1), b"a");
        open(&mut s, ch(2), b"b");
        s.send(T0, ch(1), b"last words".to_vec()).unwrap();
        s.close_send(T0, ch(1), None).unwrap();
        s.shutdown(T0, EndReason::ShuttingDown);
        s.shutdown(T0, EndReason::MuxerClosed);
        assert_eq!(
            events(&mut s),
            vec![
                MuxEvent::Aborted { channel: ch(1), reason: EndReason::ShuttingDown },
                MuxEvent::Aborted { channel: ch(2), reason: EndReason::ShuttingDown },
                MuxEvent::Shutdown { reason: EndReason::ShuttingDown },
            ],
            "{codec:?}: once, the streams first"
        );
        let sent = transmits(&mut s);
        let kinds: Vec<ControlType> = sent.iter().map(|f| f.control.clone()).collect();
        assert_eq!(kinds, vec![ControlType::Data, ControlType::Data, ControlType::Close], "close goes last");
        assert!(events(&mut s).is_empty(), "no Sent for aborted streams");
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.send(T0, ch(1), vec![]), Err(MuxError::ShutDown));
        assert_eq!(s.close_send(T0, ch(1), None), Err(MuxError::ShutDown));
        assert_eq!(s.stream_count(), 0);
        assert_eq!(s.recv(ch(2)), None);
        s.handle_frame(T0, &data(codec, STORE, ch(3), b"late"));
        s.handle_timeout(T0 + Millis::from_secs(1000));
        assert!(events(&mut s).is_empty());
        assert!(!s.has_transmit());
    }
    let mut c = client(Codec::Json);
    c.shutdown(T0, EndReason::ClientClosed);
    assert_eq!(c.open_stream(T0, STORE, vec![]), Err(MuxError::ShutDown));
}

fn reset() -> EndReason {
    EndReason::Transport("connection reset by peer".into())
}

#[test]
fn transport_loss_tears_down_without_sending() {
    for codec in CODECS {
        let mut s = server(codec);
        open(&mut s, CHANNEL, b"a");
        s.send(T0, CHANNEL, b"unsent".to_vec()).unwrap();
        s.handle_frame(T0, &control(codec, ControlType::Ping));
        s.handle_transport_closed(T0, reset());
        assert!(!s.has_transmit(), "{codec:?}: the socket is gone");
        assert_eq!(
            events(&mut s),
            vec![
                MuxEvent::Aborted { channel: CHANNEL, reason: reset() },
                MuxEvent::Shutdown { reason: reset() },
            ]
        );
        s.handle_transport_closed(T0, EndReason::MuxerClosed);
        assert!(events(&mut s).is_empty());
    }
}

#[test]
fn app_calls_after_shutdown_are_harmless() {
    let mut s = server(Codec::Json);
    open(&mut s, CHANNEL, b"a");
    s.shutdown(T0, EndReason::ShuttingDown);
    events(&mut s);
    s.release(CHANNEL);
    s.reject(T0, CHANNEL, &EndReason::StoreUnavailable);
    assert_eq!(s.recv(CHANNEL), None);
    assert_eq!(transmits(&mut s), vec![Frame::control(ControlType::Close)]);
    assert!(events(&mut s).is_empty());
}
