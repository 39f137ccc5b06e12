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
