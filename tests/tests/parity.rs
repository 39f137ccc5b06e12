//! The end-to-end parity suite: every scenario of the Go integration tests (PROTOCOL.md §9.1), the live
//! resilience scenarios (§9.3), the invariants of ARCHITECTURE.md over real sockets, cancelled reads, and
//! hostile input, against real servers and clients (see the `streamkit_tests` harness).
//!
//! One test binary (link time): each scenario is an `async fn(Env)`, expanded by [`across_all!`] into
//! one `#[test]` per configuration (module = configuration, function = scenario), e.g.
//! `scenarios::tokio_cbor::consumer_operations`. Run one configuration with
//! `cargo test -p streamkit-tests --test parity tokio_json`.

/// One `#[test]` per configuration of the suite for each scenario named.
macro_rules! across_all {
    ($($case:ident),* $(,)?) => {
        across_all!(@one tokio_inproc, TOKIO_INPROC, $($case),*);
        across_sockets!($($case),*);
    };
    (@one $module:ident, $config:ident, $($case:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    streamkit_tests::run(streamkit_tests::Config::$config, super::$case);
                }
            )*
        }
    };
}

/// One `#[test]` per WebSocket configuration (JSON and CBOR on tokio, smol and async-std).
macro_rules! across_sockets {
    ($($case:ident),* $(,)?) => {
        across_all!(@one tokio_json, TOKIO_JSON, $($case),*);
        across_all!(@one tokio_cbor, TOKIO_CBOR, $($case),*);
        across_all!(@one smol_json, SMOL_JSON, $($case),*);
        across_all!(@one smol_cbor, SMOL_CBOR, $($case),*);
        across_all!(@one async_std_json, ASYNC_STD_JSON, $($case),*);
        across_all!(@one async_std_cbor, ASYNC_STD_CBOR, $($case),*);
    };
}

/// One `#[test]` per tokio configuration (in-process, JSON, CBOR).
macro_rules! across_tokio {
    ($($case:ident),* $(,)?) => {
        across_all!(@one tokio_inproc, TOKIO_INPROC, $($case),*);
        across_all!(@one tokio_json, TOKIO_JSON, $($case),*);
        across_all!(@one tokio_cbor, TOKIO_CBOR, $($case),*);
    };
}

mod parity {
    pub mod cancel;
    pub mod common;
    pub mod hostile;
    pub mod invariants;
    pub mod isolation;
    pub mod resilience;
    pub mod scenarios;
}
