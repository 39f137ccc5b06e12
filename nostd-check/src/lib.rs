//! A `no_std` static library that links `streamkit-proto` and exercises its codecs, so the linker must
//! resolve everything the core uses without the standard library.
#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;

use streamkit_proto::api::{Entry, Envelope, Peek};
use streamkit_proto::wire::{Codec, Frame, Limits, MessageKind};

/// An allocator that always fails: enough to link; the check only needs the symbols resolved.
struct NoAlloc;

unsafe impl GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: NoAlloc = NoAlloc;

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    loop {}
}

/// Encodes and decodes a frame with both codecs; returns the number of bytes produced.
#[unsafe(no_mangle)]
pub extern "C" fn streamkit_nostd_roundtrip() -> usize {
    let env = Envelope::Peek(Peek { space: "s".into(), segment: "g".into() });
    let mut total = 0;
    for codec in [Codec::Json, Codec::Cbor] {
        let inner = codec.encode_value(&env);
        let _ = codec.decode_message(MessageKind::Envelope, &inner);
        let _ = codec.decode_message(MessageKind::Entry, &codec.encode_value(&Entry::default()));
        let frame = Frame::data(Default::default(), Default::default(), inner);
        let bytes = codec.encode_frame(&frame);
        total += bytes.len();
        let _ = codec.decode_frame(&bytes, &Limits::default());
    }
    total
}

/// The server side of the core without `std`: a connection and the engine, a peek fed in as the
/// bytes of a frame, storage effects executed on a `MemoryKv`, the answer's frames counted. The same
/// loop as `core/examples/sans_io.rs`, on `BTreeMap` and without printing.
#[unsafe(no_mangle)]
pub extern "C" fn streamkit_nostd_engine() -> usize {
    use alloc::collections::BTreeMap;
    use streamkit_proto::Millis;
    use streamkit_proto::auth::StoreScopes;
    use streamkit_proto::mux::{MuxConfig, MuxSession, Role};
    use streamkit_proto::node::{BusCommand, BusEvent};
    use streamkit_proto::server::{Engine, EngineConfig, EngineEffect, ServerConnection};
    use streamkit_proto::storage::{MemoryKv, OrderedKv};

    let now = Millis(1);
    let Ok(scopes) = StoreScopes::from_scopes(&["streamkit::*"]) else { return 0 };
    let mux = MuxSession::new(Role::Server { scopes }, Codec::Json, MuxConfig::default(), now, 1);
    let mut server = ServerConnection::new(1, mux);
    let mut engine = Engine::new(EngineConfig::default(), now, 2);
    let mut stores: BTreeMap<_, MemoryKv> = BTreeMap::new();

    let request = Codec::Json.encode_value(&Envelope::Peek(Peek { space: "s".into(), segment: "g".into() }));
    server.handle_frame(
        now,
        &Codec::Json.encode_frame(&Frame::data(Default::default(), Default::default(), request)),
    );
    let mut answered = 0;
    loop {
        let mut progressed = false;
        while let Some((_, input)) = server.poll_engine_input() {
            engine.handle_input(now, input);
            progressed = true;
        }
        while let Some(effect) = engine.poll_effect() {
            progressed = true;
            match effect {
                EngineEffect::Output(output) => server.handle_engine(now, output),
                EngineEffect::OpenStore { store } => engine.handle_store_opened(now, store, Ok(())),
                EngineEffect::Storage { store, op, request } => {
                    let result = stores.entry(store).or_default().execute(&request);
                    engine.handle_storage(now, store, op, result);
                }
                EngineEffect::Bus { store, command: BusCommand::Subscribe { op, .. } } => {
                    engine.handle_bus(now, store, BusEvent::Subscribed { op, result: Ok(()) })
                }
                EngineEffect::Bus {
                    store,
                    command: BusCommand::Publish { op, .. } | BusCommand::Announce { op, .. },
                } => engine.handle_bus(now, store, BusEvent::Published { op, result: Ok(()) }),
                _ => {}
            }
        }
        while let Some(frame) = server.poll_transmit() {
            answered += frame.len();
            progressed = true;
        }
        if !progressed {
            return answered;
        }
    }
}
