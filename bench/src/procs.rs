//! Child processes the harness owns (nats-server, redis-server): started on a free loopback port,
//! waited for, and killed when their guard is dropped (normal end, error, panic or Ctrl-C).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::Result;

/// A running child process; killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Starts `program` with `args`, its output discarded (stderr kept for start-up failures only
    /// through the exit check in [`wait_for_port`](Self::wait_for_port)).
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Self> {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
        Ok(Self { name: name.to_owned(), child: Some(child) })
    }

    /// Waits until `addr` accepts TCP connections, failing if the process exits first or `timeout`
    /// passes.
    pub async fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("{} exited during start-up: {status}", self.name).into());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not listen on {addr} within {timeout:?}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the process and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // kill_on_drop also does this; being explicit keeps the intent visible.
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
