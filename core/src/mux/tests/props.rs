//! Property tests: random interleavings of application calls, time steps, frame loss and disconnects
//! across a client and a server session. Whatever happens, no session panics or exceeds a bound, both
//! applications see a consistent stream lifecycle (every stream registered once and ended once), data
//! arrives in order, and on a reliable transport every stream completes once both sides close.

extern crate std;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use proptest::prelude::*;

use super::*;
use crate::mux::MuxError;
use crate::mux::fuzzing::SessionChecker;
use crate::sim::{Endpoint, LinkConfig, MuxNet, MuxNetConfig, Observed};

#[derive(Clone, Debug)]
enum Op {
    Open {
        denied: bool,
        len: u8,
    },
    Send {
        client: bool,
        stream: u8,
        len: u8,
    },
    CloseSend {
        client: bool,
        stream: u8,
        err: bool,
    },
    /// Close our side (if not yet) and release: what well-behaved applications do.
    Release {
        client: bool,
        stream: u8,
    },
    Reject {
        stream: u8,
    },
    /// Toggle a slow reader on a stream.
    Hold {
        client: bool,
        stream: u8,
    },
    Step,
    Advance {
        ms: u16,
    },
    Disconnect,
    Shutdown {
        client: bool,
    },
}

/// Application calls and time steps; with `disrupt`, also disconnects and shutdowns.
fn op(disrupt: bool) -> impl Strategy<Value = Op> {
    let disruption_weight = if disrupt { 1 } else { 0 };
    prop_oneof![
        6 => (any::<bool>(), any::<u8>()).prop_map(|(d, len)| Op::Open { denied: d && len % 8 == 0, len }),
        10 => (any::<bool>(), any::<u8>(), any::<u8>()).prop_map(|(client, stream, len)| Op::Send { client, stream, len }),
        4 => (any::<bool>(), any::<u8>(), any::<bool>()).prop_map(|(client, stream, err)| Op::CloseSend { client, stream, err }),
        3 => (any::<bool>(), any::<u8>()).prop_map(|(client, stream)| Op::Release { client, stream }),
        1 => any::<u8>().prop_map(|stream| Op::Reject { stream }),
        3 => (any::<bool>(), any::<u8>()).prop_map(|(client, stream)| Op::Hold { client, stream }),
        10 => Just(Op::Step),
        3 => (0u16..3000).prop_map(|ms| Op::Advance { ms }),
        disruption_weight => prop_oneof![Just(Op::Disconnect), any::<bool>().prop_map(|client| Op::Shutdown { client })],
    ]
}

/// One side's application: the lifecycle model plus payload sequence numbers.
#[derive(Default)]
struct App {
    checker: SessionChecker,
    next_seq: BTreeMap<Uuid, u32>,
    last_received: BTreeMap<Uuid, u32>,
}

impl App {
    fn payload(&mut self, channel: Uuid, len: u8) -> Vec<u8> {
        let seq = self.next_seq.entry(channel).or_insert(0);
        let mut p = seq.to_le_bytes().to_vec();
        *seq += 1;
        p.resize(4 + usize::from(len), 0xab);
        p
    }

    fn pick(&self, stream: u8) -> Option<Uuid> {
        let live: Vec<Uuid> = self.checker.live().collect();
        live.get(usize::from(stream) % live.len().max(1)).copied()
    }

    /// Replays what the endpoint observed into the model and checks ordering of payloads.
    fn sync(&mut self, end: &mut Endpoint, lossy: bool) {
        for observed in end.take_new() {
            match observed {
                Observed::Event(e) => {
                    if let MuxEvent::Opened { channel, .. } = &e {
                        self.last_received.remove(channel);
                    }
                    self.checker.on_event(&e)
                }
                Observed::Item(channel, item) => {
                    self.checker.on_item(channel, &item);
                    if let StreamInput::Payload(p) = item {
                        let seq = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                        let last = self.last_received.insert(channel, seq);
                        match (last, lossy) {
                            // A server registration may start mid-stream: a late frame of a stream
                            // rejected at the stream cap opens a new one once its tombstone is pruned
                            // (PROTOCOL.md §2.9, as in Go). Streams the client opened start at 0.
                            (None, false) if !end.session.role().is_server() => {
                                assert_eq!(seq, 0, "first payload of a stream")
                            }
                            (None, false) => {}
                            (Some(last), false) => assert_eq!(seq, last + 1, "payloads in order, none lost"),
                            (Some(last), true) => assert!(seq > last, "payloads in order"),
                            (None, true) => {}
                        }
                    }
                }
            }
        }
        self.checker.check_bounds(&end.session);
    }
}

fn small_config(server: bool) -> MuxConfig {
    MuxConfig {
        limits: Limits { max_frame: 4096, max_payload: 1024 },
        heartbeat_interval: Millis(1000),
        heartbeat_jitter: Millis(200),
        idle_timeout: Millis(3000),
        max_streams: if server { 3 } else { 0 },
        stream_queue_messages: 4,
        stream_queue_bytes: 600,
        connection_queue_bytes: 1200,
        tombstone_capacity: 4,
        tombstone_ttl: Millis(2000),
        overload: crate::mux::OverloadPolicy::Close,
    }
}

fn run(codec: Codec, latency: u8, lossy: bool, seed: u64, ops: &[Op]) {
    let mut net = MuxNet::new(MuxNetConfig {
        codec,
        client_config: small_config(false),
        server_config: small_config(true),
        scopes: only(STORE),
        link: LinkConfig {
            latency: Millis(u64::from(latency)),
            drop_probability: if lossy { 0.05 } else { 0.0 },
        },
        seed,
        max_steps: 50_000,
        ..MuxNetConfig::default()
    });
    let (mut capp, mut sapp) = (App::default(), App::default());
    let mut disrupted = lossy;
    for op in ops {
        let now = net.now();
        let pair = net.pair(0);
        match op.clone() {
            Op::Open { denied, len } => {
                let store = if denied { OTHER_STORE } else { STORE };
                let mut first = 0u32.to_le_bytes().to_vec();
                first.resize(4 + usize::from(len), 0xab);
                let result = pair.client.session.open_stream(now, store, first);
                assert_eq!(result.is_ok(), !pair.client.session.is_shut_down());
                if let Ok(id) = result {
                    capp.checker.opened_by_app(id);
                    capp.next_seq.insert(id, 1);
                }
            }
            Op::Send { client, stream, len } => {
                let (app, end) =
                    if client { (&mut capp, &mut pair.client) } else { (&mut sapp, &mut pair.server) };
                if let Some(channel) = app.pick(stream) {
                    let closed = end.session.stream_info(channel).is_some_and(|i| i.send_closed);
                    let payload = app.payload(channel, len);
                    match end.session.send(now, channel, payload) {
                        Ok(()) => assert!(!closed),
                        Err(MuxError::SendClosed) => {
                            assert!(closed);
                            *app.next_seq.entry(channel).or_insert(1) -= 1;
                        }
                        Err(e) => panic!("send on a live stream failed: {e}"),
                    }
                }
            }
            Op::CloseSend { client, stream, err } => {
                let (app, end) = if client { (&capp, &mut pair.client) } else { (&sapp, &mut pair.server) };
                if let Some(channel) = app.pick(stream) {
                    let closed = end.session.stream_info(channel).is_some_and(|i| i.send_closed);
                    let result = end.session.close_send(now, channel, err.then_some("failed"));
                    assert_eq!(result.is_err(), closed);
                }
            }
            Op::Release { client, stream } => {
                let (app, end) =
                    if client { (&mut capp, &mut pair.client) } else { (&mut sapp, &mut pair.server) };
                if let Some(channel) = app.pick(stream) {
                    let _ = end.session.close_send(now, channel, None);
                    end.session.release(channel);
                    app.checker.removed_by_app(channel);
                }
            }
            Op::Reject { stream } => {
                if let Some(channel) = sapp.pick(stream) {
                    pair.server.session.reject(now, channel, &EndReason::StoreUnavailable);
                    sapp.checker.removed_by_app(channel);
                }
            }
            Op::Hold { client, stream } => {
                let (app, end) = if client { (&capp, &mut pair.client) } else { (&sapp, &mut pair.server) };
                if let Some(channel) = app.pick(stream)
                    && !end.held.remove(&channel)
                {
                    end.held.insert(channel);
                }
                if let Some(channel) = app.pick(stream)
                    && !end.held.contains(&channel)
                {
                    end.recv_all(channel);
                }
            }
            Op::Step => {
                net.step();
            }
            Op::Advance { ms } => net.run_for(Millis(u64::from(ms))),
            Op::Disconnect => {
                disrupted = true;
                net.disconnect(0);
            }
            Op::Shutdown { client } => {
                disrupted = true;
                let end = if client { &mut pair.client } else { &mut pair.server };
                end.session.shutdown(now, EndReason::ShuttingDown);
            }
        }
        net.pump();
        let pair = net.pair(0);
        capp.sync(&mut pair.client, lossy);
        sapp.sync(&mut pair.server, lossy);
    }

    if !disrupted {
        // Reliable transport, nobody shut down: once both applications close and read everything,
        // every stream still held on either side has ended.
        // Streams the server learns about while settling are closed in the next round.
        for _ in 0..3 {
            let now = net.now();
            let pair = net.pair(0);
            for (app, end) in [(&capp, &mut pair.client), (&sapp, &mut pair.server)] {
                end.held.clear();
                for channel in app.checker.live() {
                    end.recv_all(channel);
                    let _ = end.session.close_send(now, channel, None);
                }
            }
            net.settle();
            let pair = net.pair(0);
            capp.sync(&mut pair.client, lossy);
            sapp.sync(&mut pair.server, lossy);
        }
        let pair = net.pair(0);
        for (app, end) in [(&mut capp, &mut pair.client), (&mut sapp, &mut pair.server)] {
            let live: Vec<Uuid> = app.checker.live().collect();
            for channel in live {
                assert!(app.checker.has_ended(channel), "stream {channel} never ended");
                end.session.release(channel);
                app.checker.removed_by_app(channel);
            }
            assert_eq!(end.session.stream_count(), 0);
            assert_eq!(end.shutdown_reason(), None, "a reliable connection stays up");
        }
    }
    // Finally both sides shut down: every stream still registered is aborted, then Shutdown comes.
    let now = net.now();
    let pair = net.pair(0);
    pair.client.session.shutdown(now, EndReason::MuxerClosed);
    pair.server.session.shutdown(now, EndReason::MuxerClosed);
    net.settle();
    let pair = net.pair(0);
    capp.sync(&mut pair.client, lossy);
    sapp.sync(&mut pair.server, lossy);
    for app in [&capp, &sapp] {
        assert!(app.checker.is_shut_down());
        assert_eq!(app.checker.registered, app.checker.removed, "every stream ended exactly once");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn reliable_transport(
        cbor in any::<bool>(),
        latency in 0u8..30,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(false), 1..80),
    ) {
        run(if cbor { Codec::Cbor } else { Codec::Json }, latency, false, seed, &ops);
    }

    #[test]
    fn disrupted_transport(
        cbor in any::<bool>(),
        latency in 0u8..30,
        lossy in any::<bool>(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(true), 1..80),
    ) {
        run(if cbor { Codec::Cbor } else { Codec::Json }, latency, lossy, seed, &ops);
    }
}
