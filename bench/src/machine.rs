//! Facts about the machine printed with the results: fsync latency (it moves from minute to minute)
//! and the load average.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::Result;
use crate::stats::percentile;

/// The latency of a 4 KiB `write` + `fdatasync`, measured in a loop.
#[derive(Clone, Copy, Debug)]
pub struct FsyncLatency {
    /// Number of write + fdatasync calls measured.
    pub samples: usize,
    /// Mean latency.
    pub mean: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl std::fmt::Display for FsyncLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs over {} × (4 KiB write + fdatasync)",
            self.mean.as_secs_f64() * 1e6,
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            self.samples
        )
    }
}

/// Appends 4 KiB blocks to a file in `dir`, each followed by `fdatasync`, for about `budget` (at most
/// `max_samples` times), and reports the latency distribution.
pub fn measure_fsync(dir: &Path, budget: Duration, max_samples: usize) -> Result<FsyncLatency> {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let block = [0x5au8; 4096];
    let mut latencies = Vec::with_capacity(max_samples);
    let started = Instant::now();
    while latencies.len() < max_samples && (latencies.len() < 10 || started.elapsed() < budget) {
        let begun = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(begun.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    latencies.sort_unstable();
    Ok(FsyncLatency {
        samples: latencies.len(),
        mean,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

/// `/proc/loadavg`'s first three fields (1, 5 and 15 minutes), or "unknown".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The number of CPUs the process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
