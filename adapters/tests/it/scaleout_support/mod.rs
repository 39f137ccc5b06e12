//! Test support for the scale-out suites: the machine's PostgreSQL and NATS (tests skip with a printed
//! reason when a service is absent), a unique schema per test (dropped afterwards), and a private,
//! restartable PostgreSQL instance for database-restart tests.
#![allow(dead_code)] // each test binary uses a different part of it

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use streamkit::store::{PgConfig, PgDatabase};

/// The machine's PostgreSQL (trust auth, database `test`); `STREAMKIT_TEST_PG` overrides it.
pub fn pg_url() -> String {
    std::env::var("STREAMKIT_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The machine's NATS; `STREAMKIT_TEST_NATS` overrides it.
pub fn nats_url() -> String {
    std::env::var("STREAMKIT_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn reachable(url: &str, default_port: u16) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = host_port.split('/').next().unwrap_or(host_port);
    let addr =
        if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:{default_port}") };
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
}

/// Whether PostgreSQL answers; prints why the test is skipped when it does not.
pub fn pg_available(test: &str) -> bool {
    let ok = reachable(&pg_url(), 5432);
    if !ok {
        eprintln!("SKIPPED {test}: PostgreSQL is not reachable at {} (set STREAMKIT_TEST_PG)", pg_url());
    }
    ok
}

/// Whether NATS answers; prints why the test is skipped when it does not.
pub fn nats_available(test: &str) -> bool {
    let ok = reachable(&nats_url(), 4222);
    if !ok {
        eprintln!("SKIPPED {test}: NATS is not reachable at {} (set STREAMKIT_TEST_NATS)", nats_url());
    }
    ok
}

/// A schema name no other test (or run) uses.
pub fn unique_schema(test: &str) -> String {
    format!("sk_{test}_{}", uuid::Uuid::new_v4().simple()).chars().take(63).collect()
}

/// Runs SQL on `url` with a throwaway client (on a private tokio runtime in a thread of its own, so
/// any test can call it, async ones included).
pub fn sql(url: &str, statements: &str) -> Result<(), String> {
    let (url, statements) = (url.to_owned(), statements.to_owned());
    std::thread::spawn(move || sql_here(&url, &statements))
        .join()
        .unwrap_or_else(|_| Err("sql thread panicked".to_owned()))
}

fn sql_here(url: &str, statements: &str) -> Result<(), String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute(statements).await.map_err(|e| e.to_string());
        drop(client);
        let _ = driver.await;
        result
    })
}

/// A schema of its own on the machine's PostgreSQL, dropped when this guard is.
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    pub fn new(test: &str) -> Self {
        Self { url: pg_url(), name: unique_schema(test) }
    }

    pub fn config(&self) -> PgConfig {
        PgConfig::new(&self.url).with_schema(&self.name)
    }

    pub fn connect(&self) -> PgDatabase {
        PgDatabase::connect_blocking(self.config()).expect("PostgreSQL connects")
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let _ = sql(&self.url, &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a: SocketAddr| a.port()).unwrap()
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A private PostgreSQL server (its own data directory and port) that a test may stop and start: the
/// machine's shared server is never restarted. Runs as the `postgres` user when the test runs as root
/// (PostgreSQL refuses to run as root).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Initialises and starts one; `None` (with the reason printed) when the binaries are missing.
    pub fn start(test: &str) -> Option<Self> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            eprintln!("SKIPPED {test}: no PostgreSQL server binaries at {PG_BIN}");
            return None;
        }
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let dir = std::env::temp_dir().join(format!("sk-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let status = Command::new("chown").arg("postgres:postgres").arg(&dir).status().unwrap();
            assert!(status.success(), "chown of the private PostgreSQL directory");
        }
        let pg = Self { port: free_port(), dir, as_postgres };
        let data = pg.dir.join("data");
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             max_connections = 40\nshared_buffers = 32MB\n",
            pg.port,
            pg.dir.display()
        );
        let mut file = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        pg.ctl("start");
        Some(pg)
    }

    fn command(&self, program: &str) -> Command {
        let path = Path::new(PG_BIN).join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn ctl(&self, action: &str) {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.dir.join("data")).args(["-w", "-m", "fast"]);
        if action == "start" {
            command.arg("-l").arg(self.dir.join("log"));
        }
        let out = command.arg(action).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The connection string of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.ctl("start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut command = self.command("pg_ctl");
        let _ = command.arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private `nats-server` on its own port that a test may stop and start (the machine's shared
/// server is never stopped).
pub struct PrivateNats {
    pub port: u16,
    program: &'static str,
    child: Option<std::process::Child>,
}

impl PrivateNats {
    /// Starts one; `None` (with the reason printed) when `nats-server` is not installed.
    pub fn start(test: &str) -> Option<Self> {
        // Debian installs it in /usr/sbin, which is not on every PATH.
        let program = ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()));
        let Some(program) = program else {
            eprintln!("SKIPPED {test}: no nats-server binary (PATH, /usr/sbin, /usr/bin)");
            return None;
        };
        let mut nats = Self { port: free_port(), program, child: None };
        nats.restart();
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (connections are cut).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port; returns once it accepts connections.
    pub fn restart(&mut self) {
        let child = Command::new(self.program)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}
