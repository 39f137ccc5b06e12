//! streamkit: server, client and CLI on top of `streamkit-core`.
//!
//! This crate owns everything with I/O: the [`runtime`] abstraction (tokio, smol, deprecated
//! async-std), JWT verification and minting ([`auth`]), the HTTP front with the WebSocket upgrade and
//! the probe/metrics endpoints ([`http`]), the WebSocket connection wrapper and client dial ([`ws`]) and
//! the Prometheus registry ([`metrics`]), rate limits for the log lines remote peers trigger
//! ([`log_limit`]), the storage backends ([`store`]), the message bus ([`bus`]),
//! the engine task ([`engine`]) and the server ([`server`]). The protocol itself lives in the sans-IO core, re-exported as
//! [`core`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use streamkit_core as core;

/// The payload type of records and entries (`bytes::Bytes`), so users need no direct dependency.
pub use bytes::Bytes;
/// Store ids are UUIDs; the `uuid` crate is re-exported so users need no direct dependency.
pub use uuid::{self, Uuid};

pub use client::{Client, ClientBuilder, Error, ErrorKind, connect};
/// rustls, for the TLS settings of the client ([`ClientBuilder::tls_config`]) and the server.
#[cfg(feature = "tls")]
pub use futures_rustls::rustls;
pub use streamkit_core::api::{
    Consume, ConsumeSegment, ConsumeSpace, Entry, LeaseResult, Metadata, Record, SegmentStatus,
    WorkerInventory,
};
pub use streamkit_core::wire::Codec;

// The README's Rust examples are compiled with the doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

pub mod auth;
pub mod bus;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod clock;
pub mod engine;
pub mod http;
pub mod log_limit;
#[cfg(feature = "cli")]
pub mod logging;
pub mod metrics;
pub mod runtime;
pub mod server;
#[cfg(feature = "sidecar")]
mod sidecar;
pub mod store;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;
