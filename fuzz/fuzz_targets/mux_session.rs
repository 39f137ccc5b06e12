#![no_main]

// Arbitrary frame sequences (both codecs, valid and mutated) and time steps fed to a server session.
libfuzzer_sys::fuzz_target!(|data: &[u8]| streamkit_proto::mux::fuzzing::fuzz_server_session(data));
