//! Runs the fuzz entry point on fixed and random inputs, so it is compiled and exercised by `cargo test`.

use alloc::vec::Vec;

use crate::mux::fuzzing::{fuzz_server_session, run_server_session};
use crate::rand::Rng;

#[test]
fn fixed_inputs() {
    fuzz_server_session(&[]);
    fuzz_server_session(&[0xff; 64]);
    fuzz_server_session(&[0; 64]);
    // JSON, scoped, heartbeats on: open streams on the pool channels, hold one, time passes.
    fuzz_server_session(&[
        2, 0x04, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 2, 5, 0, 0, 7, 3, 6, 1, 0, 9, 0, 0, 0x10, 0,
    ]);
}

#[test]
fn random_inputs() {
    let mut rng = Rng::new(0x5eed);
    let (mut registered, mut ends, mut aborts) = (0, 0, 0);
    for round in 0..1500 {
        let len = 16 + (round % 40) * 16;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let model = run_server_session(&data);
        registered += model.registered;
        ends += model.ends;
        aborts += model.aborts;
    }
    // The interpreter must get past the first frames on random bytes, or this test proves little.
    assert!(registered > 1000 && ends > 150 && aborts > 500, "{registered} {ends} {aborts}");
}
