//! The `streamkit serve` command line as a child process, to kill with SIGKILL.
//!
//! The binary is the package's `streamkit-parity-cli` (a one-line `main` calling
//! `streamkit::cli::main`, i.e. the real command line), which cargo builds together with the test
//! binary and names in `CARGO_BIN_EXE_streamkit-parity-cli`: so the child always runs the code under test,
//! with no separate `cargo build` step and no stale binary from an earlier build.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `streamkit serve` child process; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildServer {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Runs `bin serve --listen 127.0.0.1:0 --data <data> --durability fsync` with the suite's HS256
    /// secret and waits for the line announcing its address.
    pub fn spawn(bin: &Path, data: &Path) -> ChildServer {
        let data = data.to_str().expect("utf-8 data path");
        Self::spawn_with(bin, &["--durability", "fsync", "--data", data])
    }

    /// Runs `bin serve --listen 127.0.0.1:0 <args>` with the suite's HS256 secret and waits for the
    /// line announcing its address.
    pub fn spawn_with(bin: &Path, args: &[&str]) -> ChildServer {
        let secret = String::from_utf8(crate::SECRET.to_vec()).expect("ascii secret");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("STREAMKIT_JWT_SECRET", secret)
            .env("STREAMKIT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        // Read the address on a thread, so a child that never prints cannot hang the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = lines.by_ref().map_while(Result::ok).find_map(|line| {
                line.strip_prefix("streamkit listening on ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|addr| addr.parse::<SocketAddr>().ok())
            });
            let _ = tx.send(addr);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ChildServer { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(addr)) => server.addr = addr,
            other => panic!("the child server did not announce its address: {other:?}"),
        }
        server
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's resident memory now, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// The child's peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// Resets the peak resident memory to the current one (`/proc/<pid>/clear_refs`), so that
    /// [`peak_rss`](Self::peak_rss) measures from now on.
    pub fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    }

    /// Kills the child with SIGKILL (`kill -9`) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the child server");
        self.child.wait().expect("reap the child server");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
