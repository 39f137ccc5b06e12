//! `streamkit serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use streamkit_proto::Millis;
use streamkit_proto::mux::OverloadPolicy;

use super::{CliError, KeyArgs, algorithm_name, random_hex};
use crate::auth::{Authenticator, JwksVerifier, JwtVerifier, TokenClaims, TokenSigner};
use crate::bus::NatsConfig;
use crate::http;
use crate::runtime::Runtime;
use crate::server::{BusKind, ClusterMode, ServerConfig, start};
use crate::store::{CommitDurability, PgConfig, RedbOptions, StoreFactory};
use crate::tls::ServerTls;

/// Where the stores live (`--store`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum StoreArg {
    /// Durable redb databases under `--data`, one per store.
    Embedded,
    /// In memory; lost when the server stops.
    Memory,
    /// A PostgreSQL database shared by every instance pointed at it.
    Postgres(String),
}

fn parse_store(s: &str) -> Result<StoreArg, String> {
    match s {
        "embedded" => Ok(StoreArg::Embedded),
        "memory" => Ok(StoreArg::Memory),
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(StoreArg::Postgres(url.to_owned()))
        }
        other => Err(format!("expected embedded, memory or postgres://…, got {other:?}")),
    }
}

/// The overload policy (`--overload-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OverloadArg {
    /// Stop reading the socket until the server caught up (Go's default).
    Wait,
    /// Wait, then close a stream that stays over its bound too long (Go's `close`).
    Close,
}

/// The message bus (`--bus`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum BusArg {
    Memory,
    Postgres,
    Nats(String),
}

fn parse_bus(s: &str) -> Result<BusArg, String> {
    match s {
        "memory" => Ok(BusArg::Memory),
        "postgres" => Ok(BusArg::Postgres),
        url if url.starts_with("nats://") => Ok(BusArg::Nats(url.to_owned())),
        other => Err(format!("expected memory, postgres or nats://host:port, got {other:?}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClusterArg {
    /// On with the PostgreSQL store, off otherwise.
    Auto,
    /// Shared space clock, leases in storage and cluster presence, whatever the store.
    On,
    /// None of them (a single instance on PostgreSQL that wants to skip their cost).
    Off,
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
    /// A JWKS document (`{"keys": [...]}`) instead of one key: tokens are checked with the key their
    /// `kid` names (RS256, ES256, HS256), and the file is read again when it changes, so keys rotate
    /// without a restart.
    #[arg(long, env = "STREAMKIT_JWKS", conflicts_with_all = ["jwt_secret", "jwt_key", "jwks_url"])]
    jwks: Option<PathBuf>,
    /// A JWKS document at a URL (an identity provider's `jwks_uri`), fetched at start and refreshed
    /// every `--jwks-refresh-secs`.
    #[arg(long, env = "STREAMKIT_JWKS_URL", conflicts_with_all = ["jwt_secret", "jwt_key"])]
    jwks_url: Option<String>,
    /// Seconds between two fetches of `--jwks-url`.
    #[arg(long, default_value_t = 300)]
    jwks_refresh_secs: u64,
    /// Storage backend: `embedded` (redb under `--data`), `memory`, or a PostgreSQL connection string
    /// (`postgres://user[:password]@host[:port]/database`) shared by several instances.
    #[arg(long, env = "STREAMKIT_STORAGE", default_value = "embedded", value_parser = parse_store)]
    store: StoreArg,
    /// Durability of embedded commits.
    #[arg(long, value_enum, default_value = "fsync")]
    durability: Durability,
    /// PostgreSQL store: schema holding the tables (created and migrated at start).
    #[arg(long, env = "STREAMKIT_PG_SCHEMA", default_value = "public")]
    pg_schema: String,
    /// PostgreSQL store: connections in the pool shared by every store.
    #[arg(long, default_value_t = 16)]
    pg_pool: usize,
    /// Message bus between instances: `memory` (this instance only), `postgres` (LISTEN/NOTIFY on the
    /// store's database) or `nats://host:port`.
    #[arg(long, env = "STREAMKIT_BUS", default_value = "memory", value_parser = parse_bus)]
    bus: BusArg,
    /// NATS bus: prefix of every subject (to keep deployments sharing a NATS server apart).
    #[arg(long, default_value = "")]
    nats_prefix: String,
    /// Shared space clock, leases in storage and cluster-wide worker presence.
    #[arg(long, value_enum, default_value = "auto")]
    cluster: ClusterArg,
    /// Cluster presence: milliseconds between an instance's announcements of its workers.
    #[arg(long, default_value_t = 10_000)]
    presence_interval_ms: u64,
    /// Cluster presence: floor of the time after which a silent instance's workers are dropped
    /// (`max(floor, 3 × interval)`), in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    presence_stale_floor_ms: u64,
    /// Cluster presence: milliseconds between checks for expired workers and silent instances.
    #[arg(long, default_value_t = 5_000)]
    presence_sweep_ms: u64,
    /// Close stores idle for this many seconds (0 keeps them open).
    #[arg(long, default_value_t = 600)]
    idle_evict_secs: u64,
    /// What a connection does when a stream sends faster than the server takes its input: `wait`
    /// (Go's default) stops reading the socket until the server caught up; `close` (Go's `close`)
    /// also waits, but closes a stream that stays over its bound for `--overload-threshold` + 1
    /// periods of `--overload-timeout-ms`, with `stream receive buffer overloaded`.
    #[arg(long, value_enum, default_value = "wait")]
    overload_policy: OverloadArg,
    /// `--overload-policy close`: one offer timeout, in milliseconds (Go: 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    overload_timeout_ms: u64,
    /// `--overload-policy close`: timeouts tolerated before the stream is closed (Go: 3).
    #[arg(long, default_value_t = 3)]
    overload_threshold: u32,
    /// Engine shards: the stores are spread over this many engine tasks, so the engine can use that
    /// many cores (default: the available parallelism).
    #[arg(long, env = "STREAMKIT_SHARDS", value_parser = clap::value_parser!(u16).range(1..))]
    shards: Option<u16>,
    /// Serve `wss://` with this certificate chain (PEM); needs `--tls-key`. The files are read again
    /// when they change (renewals need no restart).
    #[arg(long, env = "STREAMKIT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "STREAMKIT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM) on top of the bearer token (mutual TLS).
    #[arg(long, env = "STREAMKIT_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// WebSocket connections served at once; upgrades over it get `503` with `Retry-After`.
    #[arg(long, env = "STREAMKIT_MAX_CONNECTIONS", default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Logical streams one connection may have open (0 = unlimited, Go's default); more are refused
    /// with `too many active streams`.
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    max_streams_per_connection: usize,
    /// Connections not yet upgraded (request not read or not answered) allowed at once; more are
    /// closed at once.
    #[arg(long, default_value_t = http::DEFAULT_MAX_PENDING_HANDSHAKES)]
    max_pending_handshakes: usize,
    /// Connections not yet upgraded allowed at once from one address (an IPv4 address or an IPv6 /64;
    /// 0 = no per-address cap, e.g. behind a reverse proxy); more are closed at once.
    #[arg(long, default_value_t = http::DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP)]
    max_pending_handshakes_per_ip: usize,
    /// Milliseconds from accept within which a connection must have sent its complete request head.
    #[arg(
        long,
        default_value_t = millis(http::DEFAULT_HEADER_TIMEOUT),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    header_timeout_ms: u64,
    #[command(flatten)]
    limits: super::limits::LimitArgs,
}

/// A default duration as whole milliseconds, for `default_value_t`.
const fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

pub(super) async fn run(runtime: Arc<dyn Runtime>, args: ServeArgs) -> Result<(), CliError> {
    let (authenticator, keys): (Arc<dyn Authenticator>, String) = if let Some(url) = &args.jwks_url {
        let jwks = JwksVerifier::from_url(url, Duration::from_secs(args.jwks_refresh_secs)).await?;
        let keys = format!("JWKS {url}, key ids {}", jwks.key_ids().join(", "));
        (Arc::new(jwks), keys)
    } else if let Some(path) = &args.jwks {
        let jwks = JwksVerifier::from_file(path)?;
        let keys = format!("JWKS {}, key ids {}", path.display(), jwks.key_ids().join(", "));
        (Arc::new(jwks), keys)
    } else {
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
        let algorithm = algorithm_name(verifier.algorithm()).to_owned();
        (Arc::new(verifier), algorithm)
    };
    let mut config = match &args.store {
        StoreArg::Memory => ServerConfig::new(args.listen, authenticator, StoreFactory::memory()),
        StoreArg::Embedded => {
            std::fs::create_dir_all(&args.data)
                .map_err(|e| format!("cannot create data directory {}: {e}", args.data.display()))?;
            let durability = match args.durability {
                Durability::Fsync => CommitDurability::Immediate,
                Durability::None => CommitDurability::None,
            };
            let stores =
                StoreFactory::embedded(&args.data, RedbOptions { durability, ..RedbOptions::default() });
            ServerConfig::new(args.listen, authenticator, stores)
        }
        StoreArg::Postgres(url) => {
            let mut database = PgConfig::new(url.clone()).with_schema(args.pg_schema.clone());
            database.pool_size = args.pg_pool.max(1);
            ServerConfig::postgres(args.listen, authenticator, database)
        }
    };
    config.bus_kind = match &args.bus {
        BusArg::Memory => BusKind::Memory,
        BusArg::Postgres => BusKind::Postgres,
        BusArg::Nats(url) => BusKind::Nats(NatsConfig {
            subject_prefix: args.nats_prefix.clone(),
            ..NatsConfig::new(url.clone())
        }),
    };
    config.cluster = match args.cluster {
        ClusterArg::Auto => ClusterMode::Auto,
        ClusterArg::On => ClusterMode::On,
        ClusterArg::Off => ClusterMode::Off,
    };
    config.node.presence_announce_interval = Millis(args.presence_interval_ms.max(1));
    config.node.presence_stale_floor = Millis(args.presence_stale_floor_ms);
    config.node.presence_sweep_interval = Millis(args.presence_sweep_ms.max(1));
    config.max_connections = args.max_connections;
    config.max_streams_per_connection = args.max_streams_per_connection;
    config.http.max_pending_handshakes = args.max_pending_handshakes;
    config.http.max_pending_handshakes_per_ip = args.max_pending_handshakes_per_ip;
    config.http.header_timeout = Duration::from_millis(args.header_timeout_ms);
    args.limits.apply(&mut config);
    config.overload_policy = match args.overload_policy {
        OverloadArg::Wait => OverloadPolicy::Wait,
        OverloadArg::Close => OverloadPolicy::WaitThenClose {
            timeout: Millis(args.overload_timeout_ms),
            threshold: args.overload_threshold,
        },
    };
    if let Some(shards) = args.shards {
        config.shards = usize::from(shards);
    }
    config.idle_eviction = match args.idle_evict_secs {
        0 => None,
        secs => Some(streamkit_proto::manager::IdleEviction {
            ttl: Millis::from_secs(secs),
            ..streamkit_proto::manager::IdleEviction::default()
        }),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = match &args.tls_client_ca {
            None => ServerTls::from_pem_files(cert, key),
            Some(ca) => ServerTls::require_client_certificates(cert, key, ca),
        };
        config.http.tls = Some(tls.map_err(|e| format!("cannot set up TLS: {e}"))?);
    }
    let server = start(runtime, config).await.map_err(|e| format!("cannot start the server: {e}"))?;
    // Scripts read this line for the address (with `--listen 127.0.0.1:0`).
    println!("streamkit listening on {} ({}/streamz, {keys})", server.local_addr(), server.url());
    server
        .shutdown_on(async {
            shutdown_signal().await;
            // Logged rather than printed: with `--log-format json`, every line of stderr is a JSON object.
            tracing::info!("shutdown signal received");
        })
        .await;
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
