//! The adapters' integration suites, in one test binary (one link instead of one per suite). Each
//! module is a suite; `cargo test -p streamkit --all-features --test it <module>` runs one of them.

/// Generates `#[test]` wrappers that run the named `async fn(Arc<dyn Runtime>)` cases of the calling
/// module on every runtime whose feature is on (modules `on_tokio`, `on_smol`, `on_async_std`); the
/// second form names the cases per runtime.
macro_rules! per_runtime {
    ($($case:ident),* $(,)?) => {
        per_runtime!(tokio: [$($case),*], smol: [$($case),*], async_std: [$($case),*]);
    };
    (tokio: [$($t:ident),* $(,)?], smol: [$($s:ident),* $(,)?], async_std: [$($a:ident),* $(,)?] $(,)?) => {
        #[cfg(feature = "tokio")]
        mod on_tokio {
            $( #[test] fn $t() { crate::runtimes::run_tokio(super::$t) } )*
        }
        #[cfg(feature = "smol")]
        mod on_smol {
            $( #[test] fn $s() { crate::runtimes::run_smol(super::$s) } )*
        }
        #[cfg(feature = "async-std")]
        mod on_async_std {
            $( #[test] fn $a() { crate::runtimes::run_async_std(super::$a) } )*
        }
    };
}

mod client_support;
mod runtimes;
#[cfg(feature = "postgres")]
mod scaleout_support;
mod support;

#[cfg(feature = "cli")]
mod client_cli;
mod client_handlers;
mod client_leases;
mod client_operations;
mod client_resilience;
mod custom_store;
mod feature_sets;
mod scaleout;
#[cfg(feature = "cli")]
mod scaleout_processes;
mod server_backpressure;
mod server_durability;
mod server_embedding;
mod server_handshake_limits;
mod server_jwks;
mod server_limits;
mod server_load;
#[cfg(feature = "cli")]
mod server_logs;
mod server_ops;
mod server_quotas;
mod server_runtimes;
mod server_security;
mod server_shards;
mod server_smoke;
#[cfg(feature = "tls")]
mod server_tls;
mod store_corruption;
mod store_durability;
mod store_group_commit;
mod store_model;
mod store_postgres;
mod tenant_postgres;
mod transport;
