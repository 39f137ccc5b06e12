//! Collected results and their Markdown report: one table per metric (medians over the runs) and the
//! streamkit/peer ratios at equal durability.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::stats::{median, percentile};
use crate::targets::{DurabilityClass, Target};
use crate::workloads::{Measurement, Metric, Workload};

/// Everything measured so far.
#[derive(Default)]
pub struct Results {
    /// Measurements per (target index, metric), one per run.
    pub measurements: BTreeMap<(usize, Metric), Vec<Measurement>>,
    /// Failed runs per (target index, workload).
    pub errors: BTreeMap<(usize, Workload), Vec<String>>,
    /// Wall time of every run per (target index, workload), including start-up and loading.
    pub wall: BTreeMap<(usize, Workload), Vec<Duration>>,
}

/// The medians of one target's runs of one metric.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Records per run (the first run's; all runs use the same size).
    pub ops: u64,
    /// Median rate, records per second.
    pub rate: f64,
    /// Median payload MB/s.
    pub mb_per_s: f64,
    /// Median of the runs' p50 latency, if latencies were measured.
    pub p50: Option<Duration>,
    /// Median of the runs' p99 latency.
    pub p99: Option<Duration>,
    /// Number of runs.
    pub runs: usize,
}

impl Results {
    /// Records the outcome of one run.
    pub fn record(
        &mut self,
        target: usize,
        workload: Workload,
        wall: Duration,
        outcome: crate::Result<Vec<Measurement>>,
    ) {
        self.wall.entry((target, workload)).or_default().push(wall);
        match outcome {
            Ok(measurements) => {
                for m in measurements {
                    self.measurements.entry((target, m.metric)).or_default().push(m);
                }
            }
            Err(error) => self.errors.entry((target, workload)).or_default().push(error.to_string()),
        }
    }

    /// The medians of `target`'s runs of `metric`.
    pub fn summary(&self, target: usize, metric: Metric) -> Option<Summary> {
        let runs = self.measurements.get(&(target, metric))?;
        let first = runs.first()?;
        let mut rates: Vec<f64> = runs.iter().map(Measurement::rate).collect();
        let mut mbs: Vec<f64> = runs.iter().map(Measurement::mb_per_s).collect();
        let latency = |p: f64| -> Option<Duration> {
            let mut values: Vec<f64> = runs
                .iter()
                .filter(|m| !m.latencies.is_empty())
                .map(|m| percentile(&m.latencies, p).as_secs_f64())
                .collect();
            median(&mut values).map(Duration::from_secs_f64)
        };
        Some(Summary {
            ops: first.ops,
            rate: median(&mut rates)?,
            mb_per_s: median(&mut mbs)?,
            p50: latency(0.50),
            p99: latency(0.99),
            runs: runs.len(),
        })
    }
}

/// The workload a metric comes from.
fn workload_of(metric: Metric, space_read_in_w1: bool) -> Workload {
    match metric {
        Metric::FanInAppend | Metric::FanInReadBack => Workload::W1,
        Metric::SpaceRead if space_read_in_w1 => Workload::W1,
        Metric::SingleStreamOcc => Workload::W2,
        Metric::ConcurrentOcc => Workload::W3,
        Metric::SegmentRead | Metric::SpaceRead => Workload::W4,
        Metric::NotifyLatency => Workload::W5,
        Metric::MultiStoreOneShard | Metric::MultiStoreTwoShards => Workload::W6,
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

/// Whether `metric` is reported for `target` in this run of the harness.
fn applies(target: &Target, metric: Metric, workloads: &[Workload], space_read_in_w1: bool) -> bool {
    let workload = workload_of(metric, space_read_in_w1);
    workloads.contains(&workload) && crate::targets::runs(target, workload)
}

/// The per-metric tables.
pub fn tables(
    results: &Results,
    targets: &[Target],
    workloads: &[Workload],
    space_read_in_w1: bool,
) -> String {
    let mut out = String::new();
    for metric in Metric::ALL {
        let rows: Vec<usize> = (0..targets.len())
            .filter(|&t| applies(&targets[t], metric, workloads, space_read_in_w1))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {}\n", metric.title());
        let _ = writeln!(
            out,
            "| system | configuration | durability | records | rate | MB/s | p50 | p99 | runs |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|");
        for t in rows {
            let target = &targets[t];
            let head =
                format!("| {} | {} | {} |", target.system(), target.config(), durability(target, metric));
            if let Some(reason) = &target.skip {
                let _ = writeln!(out, "{head} – | skipped: {reason} | | | | |");
                continue;
            }
            let workload = workload_of(metric, space_read_in_w1);
            let errors = results.errors.get(&(t, workload));
            match results.summary(t, metric) {
                Some(s) => {
                    let failed = errors.map_or(String::new(), |e| format!(" ({} failed: {})", e.len(), e[0]));
                    let _ = writeln!(
                        out,
                        "{head} {} | {} | {:.1} | {} | {} | {}{failed} |",
                        s.ops,
                        rate(s.rate),
                        s.mb_per_s,
                        ms(s.p50),
                        ms(s.p99),
                        s.runs
                    );
                }
                None if metric == Metric::SpaceRead
                    && matches!(target.kind, crate::targets::Kind::Redis { .. }) =>
                {
                    let _ = writeln!(out, "{head} – | n/a: Redis has no ordered read across keys | | | | |");
                }
                None => {
                    let why = errors.map_or_else(|| "not run".to_owned(), |e| format!("error: {}", e[0]));
                    let _ = writeln!(out, "{head} – | {} | | | | |", why.replace('|', "/"));
                }
            }
        }
        out.push('\n');
    }
    out
}

fn durability(target: &Target, metric: Metric) -> &'static str {
    if metric.is_write() || matches!(metric, Metric::FanInReadBack) {
        target.durability.label()
    } else {
        "n/a (read)"
    }
}

/// streamkit / peer ratios of the medians at equal durability: rates (> 1: streamkit faster) and,
/// where latencies are measured, p99 (< 1: streamkit lower).
pub fn ratios(
    results: &Results,
    targets: &[Target],
    workloads: &[Workload],
    space_read_in_w1: bool,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| metric | durability | streamkit | peer | rate ratio (streamkit/peer) | p99 ratio (streamkit/peer) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---:|");
    for metric in Metric::ALL {
        for class in [DurabilityClass::Fsync, DurabilityClass::None] {
            for (s, sk) in targets.iter().enumerate() {
                if !sk.is_streamkit()
                    || sk.durability != class
                    || !applies(sk, metric, workloads, space_read_in_w1)
                {
                    continue;
                }
                let Some(mine) = results.summary(s, metric) else { continue };
                for (p, peer) in targets.iter().enumerate() {
                    if peer.is_streamkit() || peer.durability != class {
                        continue;
                    }
                    let Some(theirs) = results.summary(p, metric) else { continue };
                    let p99 = match (mine.p99, theirs.p99) {
                        (Some(a), Some(b)) if !b.is_zero() => {
                            format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
                        }
                        _ => "–".into(),
                    };
                    let _ = writeln!(
                        out,
                        "| {metric:?} | {} | {} | {} ({}) | {:.2} | {p99} |",
                        durability(sk, metric),
                        sk.config(),
                        peer.system(),
                        peer.config(),
                        mine.rate / theirs.rate
                    );
                }
            }
        }
    }
    out
}

/// W6: the rate with two engine shards over the rate with one, per streamkit target.
pub fn shard_scaling(results: &Results, targets: &[Target]) -> String {
    let mut out =
        String::from("| configuration | `--shards 1` | `--shards 2` | ratio (2/1) |\n|---|---:|---:|---:|\n");
    for (t, target) in targets.iter().enumerate() {
        let one = results.summary(t, Metric::MultiStoreOneShard);
        let two = results.summary(t, Metric::MultiStoreTwoShards);
        if let (Some(one), Some(two)) = (one, two) {
            let ratio = two.rate / one.rate.max(1e-9);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {ratio:.2} |",
                target.config(),
                rate(one.rate),
                rate(two.rate)
            );
        }
    }
    out
}

/// Wall time per target and workload (start-up, loading and all phases), to size runs.
pub fn wall_times(results: &Results, targets: &[Target]) -> String {
    let mut out = String::from("| target | workload | runs | wall time per run (s) |\n|---|---|---:|---|\n");
    for ((t, workload), walls) in &results.wall {
        let list: Vec<String> = walls.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect();
        let _ =
            writeln!(out, "| {} | {workload} | {} | {} |", targets[*t].name, walls.len(), list.join(", "));
    }
    out
}
