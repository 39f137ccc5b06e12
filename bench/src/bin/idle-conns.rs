//! `idle-conns`: what an idle WebSocket connection costs the server.
//!
//! Starts `streamkit serve` (memory stores) as a child process, reads its resident memory, opens
//! `--connections` WebSocket connections (handshake done, JWT checked, then no traffic), reads the
//! resident memory again and reports the difference per connection. The server is a separate process
//! so that the client side's sockets are not counted.
//!
//! ```sh
//! cargo build --release --bin streamkit --bin idle-conns
//! target/release/idle-conns --connections 10000
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::ws::{DialOptions, dial};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "idle-conns", about = "server memory per idle WebSocket connection")]
struct Args {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Ask for the CBOR subprotocol instead of JSON frames.
    #[arg(long)]
    cbor: bool,
    /// The `streamkit` binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("idle-conns: cannot start tokio: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("idle-conns: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The server child; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(binary: &PathBuf, connections: usize) -> Result<Self> {
        let child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
            .args(["--max-connections", &(connections + 16).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = Self { child, addr: "0.0.0.0:0".parse()?, token: String::new() };
        let stdout = server.child.stdout.take().ok_or("no stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(token) = line.strip_prefix("STREAMKIT_TOKEN=") {
                server.token = token.to_owned();
            }
            if let Some(rest) = line.strip_prefix("streamkit listening on ") {
                server.addr = rest.split_whitespace().next().ok_or("no address")?.parse()?;
                return Ok(server);
            }
        }
        Err("the server exited before printing its address".into())
    }

    /// Resident memory of the server, in bytes (Linux `/proc`).
    fn rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or("no VmRSS in /proc/PID/status")?;
        Ok(kib * 1024)
    }
}

async fn run(args: Args) -> Result<()> {
    let binary = match args.server_bin {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("streamkit"),
    };
    let server = Server::start(&binary, args.connections)?;
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().ok_or("not in tokio")?);
    let url = format!("ws://{}", server.addr);
    // One connection first, so that what every server allocates once (runtime, listener, engine
    // shards, the first task of each worker) is in the baseline.
    let options = DialOptions::new(server.token.clone()).with_cbor(args.cbor);
    let warm_up = dial(&*runtime, &url, &options).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss()?;
    let started = Instant::now();
    let mut open = Vec::with_capacity(args.connections);
    let mut pending = tokio::task::JoinSet::new();
    let mut requested = 0;
    while open.len() < args.connections {
        while requested < args.connections && pending.len() < args.parallel.max(1) {
            let (runtime, url, options) = (runtime.clone(), url.clone(), options.clone());
            pending.spawn(async move { dial(&*runtime, &url, &options).await });
            requested += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(connection))) => open.push(connection),
            Some(Ok(Err(error))) => return Err(format!("connection {}: {error}", open.len() + 1).into()),
            Some(Err(error)) => return Err(format!("dial task: {error}").into()),
            None => break,
        }
    }
    let opening = started.elapsed();
    // Let the server settle (tasks parked, buffers of the handshakes released).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss()?;
    let per = after.saturating_sub(before) as f64 / open.len().max(1) as f64;
    println!(
        "{} idle connections ({}): server RSS {:.1} MB before, {:.1} MB after: {:.1} KB per connection \
         ({:.0} MB for 10,000); opened in {:.1} s",
        open.len(),
        if args.cbor { "CBOR" } else { "JSON" },
        before as f64 / 1e6,
        after as f64 / 1e6,
        per / 1e3,
        per * 10_000.0 / 1e6,
        opening.as_secs_f64(),
    );
    drop(open);
    drop(warm_up);
    Ok(())
}
