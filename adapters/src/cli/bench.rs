//! `streamkit bench`: a load generator. Produces `records` records of `size` bytes over `segments`
//! segments from `producers` concurrent producers (each produce call carries `batch` records) spread
//! over `connections` client connections, then consumes them back, and prints rates and latency
//! percentiles. Without `--url` it starts its own server (embedded store in a temporary directory,
//! fsync durability) on loopback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use uuid::Uuid;

use super::{CliError, random_hex};
use crate::auth::{JwtVerifier, TokenClaims, TokenSigner};
use crate::client::{Client, ClientOptions, static_token};
use crate::core::api::{ConsumeSegment, Record};
use crate::core::wire::Codec;
use crate::runtime::{Runtime, RuntimeExt};
use crate::server::{ServerConfig, start};
use crate::store::{CommitDurability, RedbOptions, StoreFactory};

#[derive(Args, Debug)]
pub(super) struct BenchArgs {
    /// Server address; without it a local server is started. Repeat it (or separate addresses with
    /// commas) to spread the connections over several instances sharing one store.
    #[arg(long, env = "STREAMKIT_URL", value_delimiter = ',')]
    url: Vec<String>,
    /// Token for `--url`.
    #[arg(long, env = "STREAMKIT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Store UUID (default: a fresh one).
    #[arg(long)]
    store: Option<Uuid>,
    /// Records in total.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Records per produce call.
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Segments written (in one space).
    #[arg(long, default_value_t = 16)]
    segments: u64,
    /// Concurrent producers (and consumers).
    #[arg(long, default_value_t = 16)]
    producers: u64,
    /// Client connections the producers are spread over.
    #[arg(long, default_value_t = 1)]
    connections: u64,
    /// Speak CBOR instead of JSON.
    #[arg(long)]
    cbor: bool,
    /// Local server only: data directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Local server only: skip fsync (not durable).
    #[arg(long)]
    no_fsync: bool,
}

pub(super) async fn run(runtime: Arc<dyn Runtime>, args: BenchArgs) -> Result<(), CliError> {
    let mut local = None;
    let mut temp_dir = None;
    let (urls, token) = match args.url.as_slice() {
        [_, ..] => (args.url.clone(), args.token.clone().ok_or("--url needs --token (or STREAMKIT_TOKEN)")?),
        [] => {
            let dir = match &args.data {
                Some(dir) => dir.clone(),
                None => {
                    let dir = std::env::temp_dir().join(format!("streamkit-bench-{}", random_hex(8)));
                    temp_dir = Some(dir.clone());
                    dir
                }
            };
            let secret = random_hex(32);
            let durability = if args.no_fsync { CommitDurability::None } else { CommitDurability::Immediate };
            let stores = StoreFactory::embedded(&dir, RedbOptions { durability, ..RedbOptions::default() });
            let config =
                ServerConfig::new("127.0.0.1:0".parse()?, JwtVerifier::hs256(secret.as_bytes())?, stores);
            let server = start(runtime.clone(), config).await?;
            let token = TokenSigner::hs256(secret.as_bytes())?
                .sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(3600)))?;
            let url = format!("ws://{}", server.local_addr());
            eprintln!("local server on {url}, data in {}", dir.display());
            local = Some(server);
            (vec![url], token)
        }
    };
    let result = bench(&runtime, &args, &urls, &token).await;
    if let Some(server) = local {
        server.shutdown().await;
    }
    if let Some(dir) = temp_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

async fn bench(
    runtime: &Arc<dyn Runtime>,
    args: &BenchArgs,
    urls: &[String],
    token: &str,
) -> Result<(), CliError> {
    let codec = if args.cbor { Codec::Cbor } else { Codec::Json };
    let mut clients = Vec::new();
    // Connections go round-robin over the instances, at least one per instance.
    for i in 0..args.connections.max(urls.len() as u64).max(1) {
        let url = &urls[i as usize % urls.len()];
        let options = ClientOptions::default().with_codec(codec);
        clients.push(Client::connect(runtime.clone(), url.clone(), static_token(token), options).await?);
    }
    let store = args.store.unwrap_or_else(Uuid::new_v4);
    let segments = args.segments.max(1);
    let producers = args.producers.clamp(1, segments);
    let per_segment = args.records / segments;
    let batch = args.batch.max(1);
    let payload = vec![b'x'; args.size];
    println!(
        "bench: {} records x {} B, batch {batch}, {segments} segments, {producers} producers, {} connections to {} instance(s), {}",
        per_segment * segments,
        args.size,
        clients.len(),
        urls.len(),
        if args.cbor { "CBOR" } else { "JSON" }
    );

    // Produce: producer p writes segments p, p + producers, ... one batch at a time, round-robin.
    let metrics_before = scrape_all(urls).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let client = clients[(p % clients.len() as u64) as usize].clone();
        let mine: Vec<u64> = (p..segments).step_by(producers as usize).collect();
        let payload = payload.clone();
        tasks.push(runtime.spawn(async move {
            let mut latencies = Vec::new();
            let mut next = vec![1u64; mine.len()];
            let mut remaining = true;
            while remaining {
                remaining = false;
                for (i, segment) in mine.iter().enumerate() {
                    let from = next[i];
                    if from > per_segment {
                        continue;
                    }
                    let to = (from + batch - 1).min(per_segment);
                    next[i] = to + 1;
                    remaining |= to < per_segment;
                    let records: Vec<Record> =
                        (from..=to).map(|seq| Record::new(seq, payload.clone())).collect();
                    let begun = Instant::now();
                    let mut statuses = client.produce(
                        store,
                        "bench",
                        format!("seg-{segment}"),
                        futures_util::stream::iter(records),
                    );
                    while let Some(status) = statuses.next().await {
                        status?;
                    }
                    latencies.push(begun.elapsed());
                }
            }
            Ok::<_, crate::client::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let produce_time = started.elapsed();
    let total = per_segment * segments;
    report("produce", total, args.size, produce_time, &mut latencies);
    let metrics_after = scrape_all(urls).await;
    if let (Some(before), Some(after)) = (metrics_before, metrics_after) {
        let commits = after.commits - before.commits;
        let latency = after.commit_seconds - before.commit_seconds;
        println!(
            "  server: {commits:.0} storage commits ({:.0}/s), {:.1} records per commit, mean commit latency {:.2} ms",
            commits / produce_time.as_secs_f64(),
            total as f64 / commits.max(1.0),
            latency * 1000.0 / commits.max(1.0)
        );
    }

    // Consume every segment back, `producers` segments at a time.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let client = clients[(p % clients.len() as u64) as usize].clone();
        let mine: Vec<u64> = (p..segments).step_by(producers as usize).collect();
        tasks.push(runtime.spawn(async move {
            let per_segment = per_segment;
            let mut count = 0u64;
            let mut latencies = Vec::new();
            for segment in mine {
                let begun = Instant::now();
                let request = ConsumeSegment {
                    space: "bench".into(),
                    segment: format!("seg-{segment}"),
                    ..Default::default()
                };
                let mut entries = client.consume_segment(store, request);
                let mut expected = 1;
                while let Some(entry) = entries.next().await {
                    let sequence = entry?.sequence;
                    if sequence != expected {
                        eprintln!("seg-{segment}: expected sequence {expected}, got {sequence}");
                    }
                    expected = sequence + 1;
                    count += 1;
                }
                if expected != per_segment + 1 {
                    eprintln!("seg-{segment}: ended after sequence {}", expected - 1);
                }
                latencies.push(begun.elapsed());
            }
            Ok::<_, crate::client::Error>((count, latencies))
        }));
    }
    let mut consumed = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (count, segment_latencies) = task.await.map_err(|e| e.to_string())??;
        consumed += count;
        latencies.extend(segment_latencies);
    }
    report("consume", consumed, args.size, started.elapsed(), &mut latencies);
    if consumed != total {
        return Err(format!("consumed {consumed} records, produced {total}").into());
    }
    for client in clients {
        client.close().await;
    }
    Ok(())
}

fn report(phase: &str, records: u64, size: usize, elapsed: Duration, latencies: &mut [Duration]) {
    latencies.sort_unstable();
    let pct = |p: f64| {
        let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(at).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{phase}: {records} records in {secs:.2} s = {:.0} records/s ({:.1} MiB/s); per call ({} calls) p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        records as f64 / secs,
        records as f64 * size as f64 / secs / (1 << 20) as f64,
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
    );
}

/// Counters read from the server's `/metrics`.
struct ServerCounters {
    commits: f64,
    /// Sum of the commit latencies, in seconds.
    commit_seconds: f64,
}

/// The counters of every instance, added up; `None` if any cannot be read.
async fn scrape_all(urls: &[String]) -> Option<ServerCounters> {
    let mut total = ServerCounters { commits: 0.0, commit_seconds: 0.0 };
    for url in urls {
        let counters = scrape_metrics(url).await?;
        total.commits += counters.commits;
        total.commit_seconds += counters.commit_seconds;
    }
    Some(total)
}

/// Reads the storage commit count from the server's Prometheus endpoint (plain `ws://` servers only).
async fn scrape_metrics(url: &str) -> Option<ServerCounters> {
    let host = url.strip_prefix("ws://")?.trim_end_matches('/').to_owned();
    let runtime = crate::runtime::default_runtime()?;
    let body = runtime
        .spawn_blocking(move || -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(&host)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(stream, "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
            let mut body = String::new();
            stream.read_to_string(&mut body)?;
            Ok(body)
        })
        .await
        .ok()?
        .ok()?;
    let value = |name: &str| -> Option<f64> {
        body.lines().find(|line| line.starts_with(name))?.rsplit(' ').next()?.parse().ok()
    };
    Some(ServerCounters {
        commits: value("streamkit_commit_latency_seconds_count")?,
        commit_seconds: value("streamkit_commit_latency_seconds_sum")?,
    })
}
