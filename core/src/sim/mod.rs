//! Deterministic simulation harness: virtual time, in-memory links and (for the mux layer) pairs of
//! client and server sessions wired together.
//!
//! Compiled for the crate's tests and, with the `sim` feature, for other crates' tests. The pieces are
//! layered so that later layers (a server that owns many mux sessions and a store engine) can reuse
//! them:
//!
//! * [`Clock`]: virtual time that only moves forward, plus a step budget that fails the test on
//!   livelock;
//! * [`Link`]: one direction of a transport with latency, loss and close, delivering in order;
//! * [`MuxNet`]: several [`MuxPair`]s (client session ⇄ server session over two links) driven by one
//!   clock, advancing to the earliest session timeout or link delivery;
//! * [`system::SystemSim`]: the whole server (connections, engine, nodes, stores, bus) with clients.
//!
//! Everything random (frame loss, session seeds) derives from one seed, so a failing run replays.

mod clock;
mod link;
mod mux_net;
pub mod system;

#[cfg(test)]
mod system_tests;
#[cfg(test)]
mod tests;

pub use clock::{Clock, earliest};
pub use link::{Delivery, Link, LinkConfig};
pub use mux_net::{Endpoint, MuxNet, MuxNetConfig, MuxPair, Observed};
