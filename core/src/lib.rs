//! # streamkit-proto
//!
//! The sans-IO protocol core of streamkit: wire codecs, mux sessions and the per-store engine as pure
//! state machines. No clock, socket, file, thread or randomness lives here; adapters (the `streamkit`
//! crate) drive these machines on a runtime.
//!
//! The protocol these machines speak, and the behaviour they implement, is described in [`protocol`]
//! (the repository's PROTOCOL.md); comments cite its sections as "PROTOCOL.md §N".
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

extern crate alloc;

pub mod api;
pub mod auth;
pub mod client;
pub mod lexkey;
pub mod limits;
pub mod manager;
pub mod mux;
pub mod node;
#[doc = include_str!("../PROTOCOL.md")]
pub mod protocol {}
pub mod rand;
pub mod server;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod storage;
pub mod stream;
pub mod time;
pub mod wire;

pub use time::Millis;
