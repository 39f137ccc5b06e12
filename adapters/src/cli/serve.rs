//! `streamkit serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{CliError, KeyArgs, algorithm_name, random_hex};
use crate::auth::{JwtVerifier, TokenClaims, TokenSigner};
use crate::runtime::Runtime;
use crate::server::{ServerConfig, start};
use crate::store::{CommitDurability, RedbOptions, StoreFactory};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// Durable redb databases under `--data`, one per store.
    Embedded,
    /// In memory; lost when the server stops.
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Durability {
    /// A produce is acknowledged after its commit is fsynced (concurrent commits share one).
    Fsync,
    /// No fsync: acknowledged writes since the last durable point are lost on a crash. Benchmarks only.
    None,
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the chosen address is printed).
    #[arg(long, env = "STREAMKIT_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Data directory of the embedded store.
    #[arg(long, env = "STREAMKIT_DATA", default_value = "./data")]
    data: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    /// Storage backend.
    #[arg(long, value_enum, default_value = "embedded")]
    store: StoreKind,
    /// Durability of embedded commits.
    #[arg(long, value_enum, default_value = "fsync")]
    durability: Durability,
}

pub(super) async fn run(runtime: Arc<dyn Runtime>, args: ServeArgs) -> Result<(), CliError> {
    let verifier = match args.key.verifier()? {
        Some(verifier) => verifier,
        None => {
            // Never a fixed default secret: a fresh random one, and a token for it.
            let secret = random_hex(32);
            let token = TokenSigner::hs256(secret.as_bytes())?
                .sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(24 * 3600)))?;
            println!("no JWT key configured: generated a random HS256 secret for this run");
            println!("STREAMKIT_JWT_SECRET={secret}");
            println!("STREAMKIT_TOKEN={token}");
            JwtVerifier::hs256(secret.as_bytes())?
        }
    };
    let algorithm = algorithm_name(verifier.algorithm());
    let stores = match args.store {
        StoreKind::Memory => StoreFactory::memory(),
        StoreKind::Embedded => {
            std::fs::create_dir_all(&args.data)
                .map_err(|e| format!("cannot create data directory {}: {e}", args.data.display()))?;
            let durability = match args.durability {
                Durability::Fsync => CommitDurability::Immediate,
                Durability::None => CommitDurability::None,
            };
            StoreFactory::embedded(&args.data, RedbOptions { durability, ..RedbOptions::default() })
        }
    };
    let server = start(runtime, ServerConfig::new(args.listen, verifier, stores))
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    // Scripts read this line for the address (with `--listen 127.0.0.1:0`).
    println!(
        "streamkit listening on {} (ws://{}/streamz, {algorithm})",
        server.local_addr(),
        server.local_addr()
    );
    shutdown_signal().await;
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
