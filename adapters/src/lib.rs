//! streamkit: server, client and CLI on top of `streamkit-core`.
pub use streamkit_core as core;

pub mod store;
