#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streamkit_proto::wire::fuzzing::json_frame(data));
