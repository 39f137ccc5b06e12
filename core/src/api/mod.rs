//! Every message type of the protocol (PROTOCOL.md §1): data, requests and the polymorphic envelope.

mod builders;
mod data;
mod envelope;
mod payload;
mod requests;

pub use data::*;
pub use envelope::*;
pub use payload::{PayloadError, PayloadFormat, from_cbor, from_json, to_cbor, to_json};
pub use requests::*;
