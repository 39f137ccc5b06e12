//! The workloads: W1–W5, written once against [`System`]/[`Conn`] and run on every target, and W6,
//! streamkit's scaling over engine shards.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::Result;
use crate::systems::streamkit::StreamkitConn;
use crate::systems::{Conn, System};

/// The workloads of issue 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// Fan-in: batched appends from concurrent producers over many streams, then per-stream reads.
    W1,
    /// Sequential expected-sequence appends to one stream.
    W2,
    /// Concurrent expected-sequence appends, one sequential writer per stream.
    W3,
    /// Reads: one big segment, and a whole space in order.
    W4,
    /// Notification latency, producer to a watcher on another connection.
    W5,
    /// streamkit only: appends spread over many stores, with one engine shard and with two.
    W6,
}

impl Workload {
    /// All workloads, in order.
    pub const ALL: [Workload; 6] =
        [Workload::W1, Workload::W2, Workload::W3, Workload::W4, Workload::W5, Workload::W6];
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "W1" => Ok(Workload::W1),
            "W2" => Ok(Workload::W2),
            "W3" => Ok(Workload::W3),
            "W4" => Ok(Workload::W4),
            "W5" => Ok(Workload::W5),
            "W6" => Ok(Workload::W6),
            other => Err(format!("unknown workload {other:?} (W1..W6)")),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What one measurement is of; several come out of one workload run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// W1 batched fan-in appends.
    FanInAppend,
    /// W1 read-back, every stream in its own order.
    FanInReadBack,
    /// W2 sequential expected-sequence appends.
    SingleStreamOcc,
    /// W3 concurrent expected-sequence appends.
    ConcurrentOcc,
    /// W4 one segment read.
    SegmentRead,
    /// W4 whole space read in order.
    SpaceRead,
    /// W5 produce → watcher latency.
    NotifyLatency,
    /// W6 appends over many stores, `--shards 1`.
    MultiStoreOneShard,
    /// W6 appends over many stores, `--shards 2`.
    MultiStoreTwoShards,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 9] = [
        Metric::FanInAppend,
        Metric::FanInReadBack,
        Metric::SingleStreamOcc,
        Metric::ConcurrentOcc,
        Metric::SegmentRead,
        Metric::SpaceRead,
        Metric::NotifyLatency,
        Metric::MultiStoreOneShard,
        Metric::MultiStoreTwoShards,
    ];

    /// Heading of its table.
    pub fn title(self) -> &'static str {
        match self {
            Metric::FanInAppend => "W1 fan-in append (batched, 16 producers)",
            Metric::FanInReadBack => "W1 read back (every stream in order)",
            Metric::SingleStreamOcc => "W2 single-stream expected-sequence appends (sequential)",
            Metric::ConcurrentOcc => "W3 concurrent expected-sequence appends (64 streams)",
            Metric::SegmentRead => "W4 read one segment",
            Metric::SpaceRead => "W4 read one space (all segments, in order)",
            Metric::NotifyLatency => "W5 notification latency (produce → watcher on another connection)",
            Metric::MultiStoreOneShard => "W6 appends over 64 stores (16 producers, batched), `--shards 1`",
            Metric::MultiStoreTwoShards => "W6 appends over 64 stores (16 producers, batched), `--shards 2`",
        }
    }

    /// Whether the ops of this metric are writes whose durability matters.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Metric::FanInAppend
                | Metric::SingleStreamOcc
                | Metric::ConcurrentOcc
                | Metric::NotifyLatency
                | Metric::MultiStoreOneShard
                | Metric::MultiStoreTwoShards
        )
    }
}

/// Sizes of the workloads.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Payload bytes per record.
    pub payload: usize,
    /// W1 records in total.
    pub w1_events: u64,
    /// W1 streams.
    pub w1_streams: u64,
    /// W1 concurrent producers.
    pub w1_producers: u64,
    /// W1 records per batch.
    pub w1_batch: u64,
    /// W2 appends.
    pub w2_appends: u64,
    /// W3 streams (one writer each).
    pub w3_streams: u64,
    /// W3 appends per stream.
    pub w3_appends: u64,
    /// W4 records in the big segment.
    pub w4_events: u64,
    /// W4 records per loading batch.
    pub w4_batch: u64,
    /// W5 samples.
    pub w5_samples: u64,
    /// W6 stores (one segment each).
    pub w6_stores: u64,
    /// W6 records in total.
    pub w6_events: u64,
}

impl Sizes {
    /// The sizes.
    pub fn full() -> Self {
        Self {
            payload: 100,
            w1_events: 1_000_000,
            w1_streams: 1_000,
            w1_producers: 16,
            w1_batch: 100,
            w2_appends: 10_000,
            w3_streams: 64,
            w3_appends: 1_000,
            w4_events: 1_000_000,
            w4_batch: 1_000,
            w5_samples: 10_000,
            w6_stores: 64,
            w6_events: 256_000,
        }
    }

    /// A smoke-test size that finishes in seconds, even in a debug build.
    pub fn quick() -> Self {
        Self {
            payload: 100,
            w1_events: 2_000,
            w1_streams: 20,
            w1_producers: 4,
            w1_batch: 50,
            w2_appends: 100,
            w3_streams: 8,
            w3_appends: 25,
            w4_events: 2_000,
            w4_batch: 500,
            w5_samples: 100,
            w6_stores: 8,
            w6_events: 800,
        }
    }

    /// These sizes with W2, W3 and W5 divided by `factor` and W1 by `w1_factor` (a target that fsyncs
    /// every message and would take far too long at full size); reads keep their size. Every count
    /// stays at least 1 (W1: one record per stream).
    pub fn reduced_writes(self, factor: u64, w1_factor: u64) -> Self {
        let cut = |n: u64| (n / factor.max(1)).max(1);
        Self {
            w1_events: (self.w1_events / w1_factor.max(1)).max(self.w1_streams),
            w2_appends: cut(self.w2_appends),
            w3_appends: cut(self.w3_appends),
            w5_samples: cut(self.w5_samples),
            ..self
        }
    }
}

/// One measurement: `ops` operations (records) in `elapsed`, with per-operation latencies where the
/// workload measures them.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// What was measured.
    pub metric: Metric,
    /// Records written or read.
    pub ops: u64,
    /// Payload bytes per record.
    pub payload: usize,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Per-operation latencies, sorted (empty when not measured).
    pub latencies: Vec<Duration>,
}

impl Measurement {
    fn new(
        metric: Metric,
        ops: u64,
        payload: usize,
        elapsed: Duration,
        mut latencies: Vec<Duration>,
    ) -> Self {
        latencies.sort_unstable();
        Self { metric, ops, payload, elapsed, latencies }
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabytes (10^6) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.rate() * self.payload as f64 / 1e6
    }
}

/// Checks that each stream's records arrive with strictly increasing positions.
#[derive(Default)]
pub struct OrderCheck {
    last: HashMap<String, u64>,
}

impl OrderCheck {
    /// Records `position` for `stream`; an error if it does not increase.
    pub fn check(&mut self, stream: &str, position: u64) -> Result<()> {
        match self.last.get_mut(stream) {
            Some(last) if position <= *last => {
                Err(format!("{stream}: position {position} after {last}: out of order").into())
            }
            Some(last) => {
                *last = position;
                Ok(())
            }
            None => {
                self.last.insert(stream.to_owned(), position);
                Ok(())
            }
        }
    }
}

/// Runs `workload` on `system`. `space_read` adds the W4 space read to a W1 run (it reads W1's data)
/// and makes a W4 run skip it.
pub async fn run<S: System>(
    system: &S,
    workload: Workload,
    sizes: &Sizes,
    space_read_in_w1: bool,
) -> Result<Vec<Measurement>> {
    let payload = Bytes::from(vec![b'x'; sizes.payload]);
    match workload {
        Workload::W1 => {
            let conn = system.connect().await?;
            let mut out = vec![fan_in(&conn, sizes, &payload).await?, read_back(&conn, sizes).await?];
            if space_read_in_w1 && conn.space_read_unsupported().is_none() {
                out.push(space_read(system, sizes).await?);
            }
            conn.close().await;
            Ok(out)
        }
        Workload::W2 => Ok(vec![single_stream_occ(system, sizes, &payload).await?]),
        Workload::W3 => Ok(vec![concurrent_occ(system, sizes, &payload).await?]),
        Workload::W4 => {
            let mut out = vec![segment_read(system, sizes, &payload).await?];
            if !space_read_in_w1 {
                let conn = system.connect().await?;
                if conn.space_read_unsupported().is_none() {
                    fan_in(&conn, sizes, &payload).await?;
                    out.push(space_read(system, sizes).await?);
                }
                conn.close().await;
            }
            Ok(out)
        }
        Workload::W5 => Ok(vec![notify_latency(system, sizes, &payload).await?]),
        Workload::W6 => Err("W6 runs on streamkit only, through `multi_store`".into()),
    }
}

/// W6: `w1_producers` producers on one connection append batches of `w1_batch` records, each to one
/// segment in every one of its share of `w6_stores` stores, round-robin (like W1, with stores instead
/// of segments): how the engine scales with its shards when the load is spread over stores.
pub async fn multi_store(conn: &StreamkitConn, metric: Metric, sizes: &Sizes) -> Result<Measurement> {
    let payload = Bytes::from(vec![b'x'; sizes.payload]);
    let stores = sizes.w6_stores.max(1);
    let per_store = (sizes.w6_events / stores).max(1);
    let producers = sizes.w1_producers.clamp(1, stores);
    let shares = (0..producers)
        .map(|p| {
            let mine = (p..stores).step_by(producers as usize);
            mine.map(|_| (conn.for_store(uuid::Uuid::new_v4()), "s0".to_owned())).collect()
        })
        .collect();
    let started = Instant::now();
    append_round_robin(shares, per_store, sizes.w1_batch, &payload).await?;
    Ok(Measurement::new(metric, per_store * stores, sizes.payload, started.elapsed(), Vec::new()))
}

/// Each producer (its own task) appends `per_stream` records to every stream of its share, in batches
/// of `batch`, one batch per stream in turn; resolves when all are acknowledged.
async fn append_round_robin<C: Conn>(
    shares: Vec<Vec<(C, String)>>,
    per_stream: u64,
    batch: u64,
    payload: &Bytes,
) -> Result<()> {
    let batch = batch.max(1);
    let mut tasks = Vec::new();
    for share in shares {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut first = 1;
            while first <= per_stream {
                let count = batch.min(per_stream - first + 1);
                for (conn, stream) in &share {
                    conn.append_batch(stream, first, count, &payload).await?;
                }
                first += count;
            }
            Ok::<_, crate::Error>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("producer task: {e}"))??;
    }
    Ok(())
}

fn stream_name(i: u64) -> String {
    format!("s{i}")
}

/// Records per W1 stream.
fn per_stream(sizes: &Sizes) -> u64 {
    sizes.w1_events / sizes.w1_streams
}

/// W1 appends: producer `p` owns streams `p, p + P, ...` and writes them one batch at a time,
/// round-robin.
async fn fan_in<C: Conn>(conn: &C, sizes: &Sizes, payload: &Bytes) -> Result<Measurement> {
    let per_stream = per_stream(sizes);
    let producers = sizes.w1_producers.clamp(1, sizes.w1_streams);
    let shares = (0..producers)
        .map(|p| {
            let mine = (p..sizes.w1_streams).step_by(producers as usize);
            mine.map(|i| (conn.clone(), stream_name(i))).collect()
        })
        .collect();
    let started = Instant::now();
    append_round_robin(shares, per_stream, sizes.w1_batch, payload).await?;
    let elapsed = started.elapsed();
    Ok(Measurement::new(
        Metric::FanInAppend,
        per_stream * sizes.w1_streams,
        sizes.payload,
        elapsed,
        Vec::new(),
    ))
}

/// W1 read-back: as many readers as producers, each reading its streams one after the other.
async fn read_back<C: Conn>(conn: &C, sizes: &Sizes) -> Result<Measurement> {
    let per_stream = per_stream(sizes);
    let readers = sizes.w1_producers.clamp(1, sizes.w1_streams);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..readers {
        let conn = conn.clone();
        let mine: Vec<String> = (r..sizes.w1_streams).step_by(readers as usize).map(stream_name).collect();
        tasks.push(tokio::spawn(async move {
            let mut total = 0;
            for stream in &mine {
                let read = conn.read_stream(stream, per_stream).await?;
                if read != per_stream {
                    return Err(format!("{stream}: read {read} of {per_stream} records").into());
                }
                total += read;
            }
            Ok::<_, crate::Error>(total)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| format!("reader task: {e}"))??;
    }
    Ok(Measurement::new(Metric::FanInReadBack, total, sizes.payload, started.elapsed(), Vec::new()))
}

/// W4 space read of W1's data, on a fresh connection.
async fn space_read<S: System>(system: &S, sizes: &Sizes) -> Result<Measurement> {
    let expected = per_stream(sizes) * sizes.w1_streams;
    let conn = system.connect().await?;
    let started = Instant::now();
    let read = conn.read_space(expected).await?;
    let elapsed = started.elapsed();
    conn.close().await;
    if read != expected {
        return Err(format!("space read: {read} of {expected} records").into());
    }
    Ok(Measurement::new(Metric::SpaceRead, read, sizes.payload, elapsed, Vec::new()))
}

/// W4 segment read: loads one stream (untimed), then reads it on a fresh connection.
async fn segment_read<S: System>(system: &S, sizes: &Sizes, payload: &Bytes) -> Result<Measurement> {
    let loader = system.connect().await?;
    let mut first = 1;
    while first <= sizes.w4_events {
        let count = sizes.w4_batch.max(1).min(sizes.w4_events - first + 1);
        loader.append_batch("big", first, count, payload).await?;
        first += count;
    }
    loader.close().await;
    let conn = system.connect().await?;
    let started = Instant::now();
    let read = conn.read_stream("big", sizes.w4_events).await?;
    let elapsed = started.elapsed();
    conn.close().await;
    if read != sizes.w4_events {
        return Err(format!("segment read: {read} of {} records", sizes.w4_events).into());
    }
    Ok(Measurement::new(Metric::SegmentRead, read, sizes.payload, elapsed, Vec::new()))
}

/// W2: one writer, each append expecting the stream's current state.
async fn single_stream_occ<S: System>(system: &S, sizes: &Sizes, payload: &Bytes) -> Result<Measurement> {
    let conn = system.connect().await?;
    let mut occ = conn.occ_start("occ");
    let mut latencies = Vec::with_capacity(sizes.w2_appends as usize);
    let started = Instant::now();
    for _ in 0..sizes.w2_appends {
        let begun = Instant::now();
        conn.append_expected(&mut occ, payload).await?;
        latencies.push(begun.elapsed());
    }
    let elapsed = started.elapsed();
    conn.close().await;
    Ok(Measurement::new(Metric::SingleStreamOcc, sizes.w2_appends, sizes.payload, elapsed, latencies))
}

/// W3: one sequential expected-sequence writer per stream, all at once on one connection.
async fn concurrent_occ<S: System>(system: &S, sizes: &Sizes, payload: &Bytes) -> Result<Measurement> {
    let conn = system.connect().await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sizes.w3_streams {
        let conn = conn.clone();
        let payload = payload.clone();
        let appends = sizes.w3_appends;
        tasks.push(tokio::spawn(async move {
            let mut occ = conn.occ_start(&format!("occ{s}"));
            let mut latencies = Vec::with_capacity(appends as usize);
            for _ in 0..appends {
                let begun = Instant::now();
                conn.append_expected(&mut occ, &payload).await?;
                latencies.push(begun.elapsed());
            }
            Ok::<_, crate::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| format!("writer task: {e}"))??);
    }
    let elapsed = started.elapsed();
    conn.close().await;
    let ops = sizes.w3_streams * sizes.w3_appends;
    Ok(Measurement::new(Metric::ConcurrentOcc, ops, sizes.payload, elapsed, latencies))
}

/// How long W5 waits for one notification before giving up.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// W5: a watcher on a second connection; each sample appends one record and waits until the watcher
/// has seen it. The latency runs from the start of the append to the watcher's receipt.
async fn notify_latency<S: System>(system: &S, sizes: &Sizes, payload: &Bytes) -> Result<Measurement> {
    let producer = system.connect().await?;
    let watcher = system.connect().await?;
    let (seen_tx, mut seen) = mpsc::channel(1024);
    let watch = watcher.watch("w5", seen_tx).await?;
    let mut occ = producer.occ_start("w5");
    let mut latencies = Vec::with_capacity(sizes.w5_samples as usize);
    let started = Instant::now();
    let result = async {
        for n in 1..=sizes.w5_samples {
            let begun = Instant::now();
            producer.append_expected(&mut occ, payload).await?;
            loop {
                match tokio::time::timeout(NOTIFY_TIMEOUT, seen.recv()).await {
                    Ok(Some((count, when))) if count >= n => {
                        latencies.push(when.saturating_duration_since(begun));
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(crate::Error::from("the watcher stopped")),
                    Err(_) => return Err(format!("record {n} not seen within {NOTIFY_TIMEOUT:?}").into()),
                }
            }
        }
        Ok(())
    }
    .await;
    let elapsed = started.elapsed();
    watch.abort();
    producer.close().await;
    watcher.close().await;
    result?;
    Ok(Measurement::new(Metric::NotifyLatency, sizes.w5_samples, sizes.payload, elapsed, latencies))
}
