//! The storage model, written once for every backend: the ordered key-value contract ([`kv`]), the key
//! layout of spec §5.2 ([`keys`]), the stored encodings ([`encoding`]) and an in-memory store
//! ([`memory`]).

pub mod kv;
pub mod memory;

pub use kv::*;
pub use memory::MemoryKv;
