//! The storage model, written once for every backend: the ordered key-value contract ([`kv`]), the key
//! layout of PROTOCOL.md §5.2 ([`keys`]) and the stored encodings ([`encoding`]).

pub mod conformance;
pub mod encoding;
pub mod keys;
pub mod kv;
pub mod memory;
pub mod verify;

pub use kv::*;
pub use memory::MemoryKv;
