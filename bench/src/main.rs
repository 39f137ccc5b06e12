//! `peer-bench`: streamkit side by side with NATS JetStream and Redis Streams on this machine, same
//! workloads, same payloads, equal durability (issue 8).
//!
//! ```sh
//! cargo run --release -p streamkit-bench --bin peer-bench -- [--quick] [--repeats N] [--only W1,W3]
//! ```
//!
//! Every run starts a fresh instance of the system under test (streamkit in this process; nats-server
//! and redis-server as child processes on their own ports with temporary data directories) and stops
//! it afterwards; targets alternate within each repeat and the tables show medians over the repeats.
//! The machine's fsync latency is measured before and after and printed with the results.

mod machine;
mod procs;
mod report;
mod stats;
mod systems;
mod targets;
mod workloads;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::report::Results;
use crate::targets::{PeerBinaries, Target};
use crate::workloads::{Sizes, Workload};

/// Errors of the harness: reported per run, never a panic.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "peer-bench", about = "streamkit vs NATS JetStream vs Redis Streams (issue 8)")]
struct Args {
    /// CI smoke mode: tiny sizes, one repeat; finishes in seconds, also in a debug build.
    #[arg(long)]
    quick: bool,
    /// Runs per target and workload (the tables show medians); default 3, 1 with --quick.
    #[arg(long)]
    repeats: Option<usize>,
    /// Workloads to run, e.g. `W1,W3` (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Only targets whose name contains one of these, e.g. `cbor,nats` (default: all).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// nats-server to run (default: $PEER_BENCH_NATS_SERVER, target/peer-bench/nats-server, PATH, /usr/sbin).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// redis-server to run (default: from PATH).
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// Write sizes of NATS `sync_interval: always` are divided by this: it fsyncs every message
    /// without group commit and would take hours at full size.
    #[arg(long, default_value_t = 20)]
    slow_reduction: u64,
    /// W1 size of NATS `sync_interval: always` is divided by this (same reason).
    #[arg(long, default_value_t = 50)]
    slow_w1_reduction: u64,
    /// W1 records (default 1,000,000; 2,000 with --quick).
    #[arg(long)]
    w1_events: Option<u64>,
    /// W2 appends (default 10,000).
    #[arg(long)]
    w2_appends: Option<u64>,
    /// W3 appends per stream (default 1,000).
    #[arg(long)]
    w3_appends: Option<u64>,
    /// W4 records in the big segment (default 1,000,000).
    #[arg(long)]
    w4_events: Option<u64>,
    /// W5 samples (default 10,000).
    #[arg(long)]
    w5_samples: Option<u64>,
    /// Abort a single run after this many seconds.
    #[arg(long, default_value_t = 600)]
    run_timeout: u64,
    /// Also write the Markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peer-bench: cannot start tokio: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peer-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What the report header needs.
struct Header {
    started: String,
    commit: String,
    command: String,
    cpus: usize,
    load_before: String,
    fsync_before: String,
    nats: String,
    redis: String,
}

async fn run(args: Args) -> Result<()> {
    let mut sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    if let Some(n) = args.w1_events {
        sizes.w1_events = n;
    }
    for (value, size) in [
        (args.w2_appends, &mut sizes.w2_appends),
        (args.w3_appends, &mut sizes.w3_appends),
        (args.w4_events, &mut sizes.w4_events),
        (args.w5_samples, &mut sizes.w5_samples),
    ] {
        if let Some(n) = value {
            *size = n;
        }
    }
    let repeats = args.repeats.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let workloads: Vec<Workload> = if args.only.is_empty() {
        Workload::ALL.to_vec()
    } else {
        Workload::ALL.into_iter().filter(|w| args.only.contains(w)).collect()
    };
    let space_read_in_w1 = workloads.contains(&Workload::W1);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");

    let peers = PeerBinaries {
        nats: targets::find_nats(args.nats_server.as_deref(), &workspace),
        redis: targets::find_redis(args.redis_server.as_deref()),
    };
    let targets: Vec<Target> =
        targets::all_targets(&peers, (args.slow_reduction.max(1), args.slow_w1_reduction.max(1)))
            .into_iter()
            .filter(|t| args.targets.is_empty() || args.targets.iter().any(|f| t.name.contains(f.as_str())))
            .collect();
    for target in targets.iter().filter(|t| t.skip.is_some()) {
        eprintln!("SKIPPED {}: {}", target.name, target.skip.as_deref().unwrap_or_default());
    }

    let probe_dir = tempfile::Builder::new().prefix("peer-bench-fsync-").tempdir()?;
    let probe_budget = if args.quick { Duration::from_millis(200) } else { Duration::from_secs(3) };
    let fsync = |label: &str| match machine::measure_fsync(probe_dir.path(), probe_budget, 2000) {
        Ok(latency) => latency.to_string(),
        Err(error) => format!("could not measure ({label}): {error}"),
    };
    let header = Header {
        started: shell("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        commit: shell("git", &["-C", &workspace.display().to_string(), "rev-parse", "--short", "HEAD"]),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cpus: machine::cpus(),
        load_before: machine::load_average(),
        fsync_before: fsync("before"),
        nats: match &peers.nats {
            Ok(binary) => format!("{} (v{})", binary.path.display(), binary.version),
            Err(error) => format!("none: {error}"),
        },
        redis: match &peers.redis {
            Ok(path) => {
                format!("{} ({})", path.display(), shell(&path.display().to_string(), &["--version"]))
            }
            Err(error) => format!("none: {error}"),
        },
    };
    eprintln!("fsync latency before: {}", header.fsync_before);

    let results = Arc::new(Mutex::new(Results::default()));
    let loop_results = results.clone();
    let run_timeout = Duration::from_secs(args.run_timeout);
    let all_runs = async {
        for repeat in 0..repeats {
            for &workload in &workloads {
                // Alternate: each repeat starts the rotation at a different target.
                let order: Vec<usize> = (0..targets.len()).map(|i| (i + repeat) % targets.len()).collect();
                for t in order {
                    let target = &targets[t];
                    if target.skip.is_some() || !targets::runs(target, workload) {
                        continue;
                    }
                    eprint!("[{}/{repeats}] {workload} {} ... ", repeat + 1, target.name);
                    let begun = Instant::now();
                    let outcome = match tokio::time::timeout(
                        run_timeout,
                        targets::run_once(target, &peers, workload, &sizes, space_read_in_w1),
                    )
                    .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Err(format!("timed out after {run_timeout:?}").into()),
                    };
                    let wall = begun.elapsed();
                    match &outcome {
                        Ok(measurements) => {
                            let rates: Vec<String> = measurements
                                .iter()
                                .map(|m| format!("{:?} {:.0}/s", m.metric, m.rate()))
                                .collect();
                            eprintln!("{:.1} s: {}", wall.as_secs_f64(), rates.join(", "));
                        }
                        Err(error) => eprintln!("{:.1} s: FAILED: {error}", wall.as_secs_f64()),
                    }
                    if let Ok(mut results) = loop_results.lock() {
                        results.record(t, workload, wall, outcome);
                    }
                }
            }
        }
    };
    let interrupted = tokio::select! {
        () = all_runs => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        eprintln!("interrupted: every server started was stopped; partial results follow");
    }

    let fsync_after = fsync("after");
    let load_after = machine::load_average();
    let results = results.lock().map_err(|_| "results lock poisoned")?;
    let mut report = String::new();
    report.push_str(&format!(
        "## peer-bench results\n\n\
         * started: {}\n* commit: {}\n* command: `{}`\n* machine: {} CPUs\n\
         * load average (1/5/15 min): before {}, after {load_after}\n\
         * fsync latency: before: {}; after: {fsync_after}\n\
         * nats-server: {}\n* redis-server: {}\n\
         * sizes: {sizes:?}; {repeats} repeat(s), medians shown{}\n\n",
        header.started,
        header.commit,
        header.command,
        header.cpus,
        header.load_before,
        header.fsync_before,
        header.nats,
        header.redis,
        if interrupted { "; INTERRUPTED, partial" } else { "" },
    ));
    for target in targets.iter().filter(|t| (t.write_reduction > 1 || t.w1_reduction > 1) && t.skip.is_none())
    {
        report.push_str(&format!(
            "Note: {} runs with W1 divided by {} and W2, W3, W5 by {}, since it fsyncs each message \
             without group commit (full sizes would take hours); its rates are comparable, its record \
             counts are not.\n\n",
            target.name, target.w1_reduction, target.write_reduction
        ));
    }
    report.push_str(&report::tables(&results, &targets, &workloads, space_read_in_w1));
    report.push_str("### Ratios at equal durability\n\n");
    report.push_str(&report::ratios(&results, &targets, &workloads, space_read_in_w1));
    if workloads.contains(&Workload::W6) {
        report.push_str("\n### W6: scaling over engine shards\n\n");
        report.push_str(&report::shard_scaling(&results, &targets));
    }
    report.push_str("\n### Wall time per run\n\n");
    report.push_str(&report::wall_times(&results, &targets));
    println!("{report}");
    if let Some(path) = &args.out {
        std::fs::write(path, &report)?;
    }
    let failures: usize = results.errors.values().map(Vec::len).sum();
    if failures > 0 {
        // Reported in the tables and here; the exit status makes a CI smoke run fail on it.
        return Err(format!("{failures} run(s) failed (see the tables)").into());
    }
    if interrupted {
        return Err("interrupted".into());
    }
    Ok(())
}

/// The trimmed output of a command, or `unknown`.
fn shell(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}
