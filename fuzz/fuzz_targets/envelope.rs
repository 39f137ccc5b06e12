#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamkit_core::wire::fuzzing::envelope(data));
