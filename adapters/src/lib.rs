//! streamkit: an embeddable, hierarchical event-streaming store — server, client SDK and CLI on top of
//! the sans-IO `streamkit-proto`, wire compatible with the Go streamkit.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn example() -> Result<(), streamkit::Error> {
//! let client = streamkit::connect("ws://127.0.0.1:7070", "<jwt>").await?;
//! let store = streamkit::Uuid::new_v4();
//! let status = client.append(store, "orders", "order-42", "created", Default::default()).await?;
//! let mut entries = client.follow_segment(store, "orders", "order-42", 0);
//! # let _ = (status, &mut entries);
//! # Ok(()) }
//! ```
//!
//! [`connect`] and [`Client::builder`] make a client; [`server::start`] runs a server in your process
//! ([`server::ServerConfig`] says how); [`Client::in_process`] talks to it without a socket.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tokio` | yes | the tokio runtime |
//! | `client` | yes | the client SDK ([`Client`], [`connect`]) over a WebSocket: runtime, WebSocket and codecs only |
//! | `server` | yes | the server ([`server::start`]): engine shards, the redb store, JWT verification, the HTTP front, Prometheus metrics; with `client` also [`Client::in_process`] |
//! | `cli` | | the `streamkit` binary (server, token minting, client commands, bench); brings `client`, `server`, `tokio`, `postgres`, `nats`, `tls`, `jwks-url` |
//! | `smol` | | the smol runtime (runtimes are additive: pick one per client or server) |
//! | `async-std` | | the async-std runtime (deprecated upstream) |
//! | `tls` | | `wss://` for clients, TLS for the server ([`tls`]), rustls re-exported |
//! | `postgres` | | the PostgreSQL store and `LISTEN/NOTIFY` bus (several instances sharing one database) |
//! | `nats` | | the NATS bus |
//! | `jwks-url` | | [`auth::JwksVerifier::from_url`]: keys fetched from an identity provider and refreshed (reqwest) |
//! | `axum` | | mount the server on an axum application ([`http::axum::router`]), with [`server::start_embedded`] |
//!
//! A program that only talks to a server takes `default-features = false, features = ["tokio",
//! "client"]` (68 crates in its tree instead of 95; no storage, JWT or metrics crates).
//!
//! # Modules
//!
//! This crate owns everything with I/O: the [`runtime`] abstraction, JWT verification and minting
//! ([`auth`]), the HTTP front with the WebSocket upgrade and the probe/metrics endpoints ([`http`]),
//! WebSocket connections ([`ws`]), the Prometheus registry ([`metrics`]), rate limits for the log lines
//! remote peers trigger ([`log_limit`]), the storage backends ([`store`]), the message bus ([`bus`]),
//! the engine shards ([`engine`]), the server ([`server`]) and the client SDK ([`client`]). The protocol
//! itself lives in the sans-IO core, re-exported as [`core`].
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub use streamkit_proto as core;

/// The payload type of records and entries (`bytes::Bytes`), so users need no direct dependency.
pub use bytes::Bytes;
/// Store ids are UUIDs; the `uuid` crate is re-exported so users need no direct dependency.
pub use uuid::{self, Uuid};

#[cfg(feature = "client")]
pub use client::{Client, ClientBuilder, Error, ErrorKind, StoreHandle, connect};
/// rustls, for the TLS settings of the client ([`ClientBuilder::tls_config`]) and the server.
#[cfg(feature = "tls")]
pub use futures_rustls::rustls;
pub use streamkit_proto::api::{
    Consume, ConsumeSegment, ConsumeSpace, Entry, LeaseResult, Metadata, PayloadError, PayloadFormat, Record,
    SegmentStatus, WorkerInventory,
};
pub use streamkit_proto::wire::Codec;

// The README's Rust examples are compiled with the doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod bus;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
#[cfg(all(feature = "client", feature = "server"))]
#[doc(hidden)]
pub mod doc_support;
#[cfg(feature = "server")]
pub mod engine;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod log_limit;
#[cfg(feature = "cli")]
pub mod logging;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(any(feature = "server", feature = "tls"))]
mod reloading;
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "sidecar")]
mod sidecar;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;
