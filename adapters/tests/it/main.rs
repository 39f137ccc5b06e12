//! The adapters' integration suites, in one test binary (one link instead of one per suite). Each
//! module is a suite; `cargo test -p streamkit --all-features --test it <module>` runs one of them.

mod client_support;
#[cfg(feature = "postgres")]
mod scaleout_support;
mod support;

mod client_cli;
mod client_operations;
mod client_resilience;
mod scaleout;
mod scaleout_processes;
mod server_durability;
mod server_limits;
mod server_load;
mod server_ops;
mod server_runtimes;
mod server_security;
mod server_smoke;
mod store_corruption;
mod store_durability;
mod store_group_commit;
mod store_model;
mod store_postgres;
mod transport;
