//! Heartbeat (PROTOCOL.md §2.8) and the timer contract.

use alloc::vec;

use super::*;
use crate::mux::{EndReason, TimeoutReason};

fn heartbeat_session(seed: u64) -> MuxSession {
    MuxSession::new(Role::Client, Codec::Json, MuxConfig::default(), T0, seed)
}

fn deadline(s: &MuxSession) -> Millis {
    match s.poll_timeout() {
        Some((at, TimeoutReason::Heartbeat)) => at,
        other => panic!("expected a heartbeat deadline, got {other:?}"),
    }
}

#[test]
fn waits_are_the_interval_minus_jitter() {
    let mut waits = alloc::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut s = heartbeat_session(seed);
        let first = deadline(&s);
        assert!(first > T0 + Millis(25_000) && first <= T0 + Millis(30_000), "{first:?}");
        waits.insert(first);
        s.handle_timeout(first - Millis(1));
        assert!(!s.has_transmit(), "early calls are spurious and harmless");
        assert_eq!(deadline(&s), first);
        s.handle_timeout(first);
        assert_eq!(transmits(&mut s), vec![Frame::control(ControlType::Ping)]);
        let second = deadline(&s);
        assert!(second > first + Millis(25_000) && second <= first + Millis(30_000));
        assert_eq!(deadline(&heartbeat_session(seed)), first, "deterministic per seed");
    }
    assert!(waits.len() > 10, "jitter spreads the connections");
}

#[test]
fn jitter_larger_than_the_interval_never_spins() {
    let config =
        MuxConfig { heartbeat_interval: Millis(10), heartbeat_jitter: Millis(1_000), ..MuxConfig::default() };
    let mut s = MuxSession::new(Role::Client, Codec::Json, config, T0, 3);
    let mut now = T0;
    for _ in 0..100 {
        let at = deadline(&s);
        assert!(at > now);
        now = at;
        s.handle_frame(now, &control(Codec::Json, ControlType::Pong));
        s.handle_timeout(now);
    }
}

#[test]
fn silence_past_the_idle_timeout_aborts_every_stream() {
    for codec in CODECS {
        let mut s = server_with(codec, MuxConfig::default(), StoreScopes::All);
        open(&mut s, ch(1), b"a");
        open(&mut s, ch(2), b"b");
        let (mut pings, mut closes) = (0, 0);
        let mut at = T0;
        while !s.is_shut_down() {
            at = deadline(&s);
            // Our own writes do not count as activity.
            s.send(at, ch(1), b"tick".to_vec()).unwrap();
            s.handle_timeout(at);
            let sent = transmits(&mut s);
            pings += sent.iter().filter(|f| f.control == ControlType::Ping).count();
            closes += sent.iter().filter(|f| f.control == ControlType::Close).count();
            if !s.is_shut_down() {
                events(&mut s);
            }
        }
        assert!((3..=4).contains(&pings), "pings before giving up: {pings}");
        assert_eq!(closes, 1, "the peer is told, best effort");
        let mut evs = events(&mut s);
        assert_eq!(evs.pop(), Some(MuxEvent::Shutdown { reason: EndReason::HeartbeatTimeout }));
        assert_eq!(
            evs,
            vec![
                MuxEvent::Aborted { channel: ch(1), reason: EndReason::HeartbeatTimeout },
                MuxEvent::Aborted { channel: ch(2), reason: EndReason::HeartbeatTimeout },
            ]
        );
        assert_eq!(s.last_activity(), T0);
        let silent = at.saturating_since(T0);
        assert!(silent > Millis(90_000) && silent <= Millis(120_000), "gave up after {silent:?}");
        assert_eq!(s.poll_timeout(), None);
    }
}

#[test]
fn inbound_frames_keep_the_connection_alive() {
    let mut s = heartbeat_session(9);
    let end = T0 + Millis::from_secs(600);
    while deadline(&s) < end {
        let at = deadline(&s);
        s.handle_timeout(at);
        for f in transmits(&mut s) {
            assert_eq!(f.control, ControlType::Ping);
            // The peer answers a little later.
            s.handle_frame(at + Millis(40), &control(Codec::Json, ControlType::Pong));
        }
    }
    assert!(!s.is_shut_down());
    assert!(events(&mut s).is_empty());
}

#[test]
fn a_zero_interval_disables_heartbeats_and_the_idle_timeout() {
    let mut s = server(Codec::Json);
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(T0 + Millis::from_secs(86_400));
    assert!(!s.is_shut_down());
    assert!(!s.has_transmit());
}

#[test]
fn poll_timeout_is_now_only_while_events_wait() {
    let mut s = server_with(Codec::Json, MuxConfig::default(), StoreScopes::All);
    let heartbeat = deadline(&s);
    s.handle_frame(T0 + Millis(7), &data(Codec::Json, STORE, CHANNEL, b"x"));
    assert_eq!(s.poll_timeout(), Some((T0 + Millis(7), TimeoutReason::PendingEvents)));
    events(&mut s);
    assert_eq!(deadline(&s), heartbeat);
    s.send(T0 + Millis(7), CHANNEL, b"y".to_vec()).unwrap();
    assert!(s.has_transmit());
    assert_eq!(deadline(&s), heartbeat, "a pending transmit is not a timer matter");
}

#[test]
fn time_never_goes_backwards() {
    let mut s = heartbeat_session(1);
    s.handle_frame(T0 + Millis(100), &control(Codec::Json, ControlType::Pong));
    s.handle_frame(T0 + Millis(50), &control(Codec::Json, ControlType::Pong));
    assert_eq!(s.last_activity(), T0 + Millis(100));
}
