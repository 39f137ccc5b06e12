//! Redis Streams on a redis-server the harness starts on its own port: no persistence, or
//! `appendonly yes` + `appendfsync always`. Expected-sequence appends are a Lua script that checks the
//! stream's last id before `XADD` (Redis itself only enforces "id greater than the top").

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Script};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Conn, SPACE, System};
use crate::Result;
use crate::procs::{ChildGuard, free_port};

/// Records fetched per `XRANGE` page.
const PAGE: usize = 1000;

/// Appends only if the stream's last id is `ARGV[1]` (`0-0` for an empty stream).
const OCC_SCRIPT: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local top = '0-0'
if #last > 0 then top = last[1][1] end
if top ~= ARGV[1] then return redis.error_reply('CONFLICT expected ' .. ARGV[1] .. ', stream is at ' .. top) end
return redis.call('XADD', KEYS[1], '*', 'd', ARGV[2])
";

/// A redis-server owned by the harness.
pub struct Redis {
    process: ChildGuard,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Redis {
    /// Starts `binary` on a free port, without persistence or with an fsync per write (`appendfsync
    /// always`).
    pub async fn start(binary: &Path, fsync_always: bool) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("peer-bench-redis-").tempdir()?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &data.path().display().to_string(),
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if fsync_always {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        let mut process = ChildGuard::spawn("redis-server", binary, &args)?;
        process.wait_for_port(addr, Duration::from_secs(10)).await?;
        Ok(Self { process, addr, _data: data })
    }
}

impl System for Redis {
    type Conn = RedisConn;

    async fn connect(&self) -> Result<RedisConn> {
        let client = redis::Client::open(format!("redis://{}/", self.addr))?;
        // No response timeout: blocking reads and fsync-bound pipelines may take long.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(RedisConn { conn, script: Script::new(OCC_SCRIPT) })
    }

    async fn stop(self) {
        self.process.stop().await;
    }
}

/// One (multiplexed) Redis connection.
#[derive(Clone)]
pub struct RedisConn {
    conn: MultiplexedConnection,
    script: Script,
}

/// The key and the id of its last entry (`0-0`: none yet).
pub struct RedisOcc {
    key: String,
    last: String,
}

fn key(stream: &str) -> String {
    format!("{SPACE}:{stream}")
}

impl Conn for RedisConn {
    type Occ = RedisOcc;

    async fn append_batch(&self, stream: &str, _first: u64, count: u64, payload: &Bytes) -> Result<()> {
        let key = key(stream);
        let mut pipe = redis::pipe();
        for _ in 0..count {
            pipe.cmd("XADD").arg(&key).arg("*").arg("d").arg(payload.as_ref()).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn read_stream(&self, stream: &str, expected: u64) -> Result<u64> {
        let key = key(stream);
        let mut conn = self.conn.clone();
        let mut start = "-".to_owned();
        let mut read = 0;
        while read < expected {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            let Some(last) = page.ids.last() else { break };
            read += page.ids.len() as u64;
            // Ids are strictly increasing by construction; the next page starts after the last one.
            start = format!("({}", last.id);
        }
        Ok(read)
    }

    fn space_read_unsupported(&self) -> Option<&'static str> {
        Some("Redis has no ordered read across keys")
    }

    async fn read_space(&self, _expected: u64) -> Result<u64> {
        Err("Redis has no ordered read across keys".into())
    }

    fn occ_start(&self, stream: &str) -> RedisOcc {
        RedisOcc { key: key(stream), last: "0-0".to_owned() }
    }

    async fn append_expected(&self, occ: &mut RedisOcc, payload: &Bytes) -> Result<()> {
        let mut conn = self.conn.clone();
        let id: String =
            self.script.key(&occ.key).arg(&occ.last).arg(payload.as_ref()).invoke_async(&mut conn).await?;
        occ.last = id;
        Ok(())
    }

    async fn watch(&self, stream: &str, seen: mpsc::Sender<(u64, Instant)>) -> Result<JoinHandle<()>> {
        let key = key(stream);
        let mut conn = self.conn.clone();
        // Establish the starting point now, so records appended after `watch` returns are all seen.
        let last: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let mut from = last.ids.first().map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone());
        Ok(tokio::spawn(async move {
            let mut count = 0;
            loop {
                let reply: redis::RedisResult<StreamReadReply> = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(0)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&from)
                    .query_async(&mut conn)
                    .await;
                let Ok(reply) = reply else { return };
                let now = Instant::now();
                for entry in reply.keys.iter().flat_map(|k| k.ids.iter()) {
                    count += 1;
                    from = entry.id.clone();
                }
                if seen.send((count, now)).await.is_err() {
                    return;
                }
            }
        }))
    }

    async fn close(self) {}
}
