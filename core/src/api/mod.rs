//! Every message type of the protocol (PROTOCOL.md §1): data, requests and the polymorphic envelope.

mod data;
mod envelope;
mod requests;

pub use data::*;
pub use envelope::*;
pub use requests::*;
