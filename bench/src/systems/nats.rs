//! NATS JetStream on a nats-server the harness starts (its own port and store directory), file
//! storage, with the server's default sync (every 2 minutes) or `sync_interval: always`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::{Context, PublishAckFuture};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Conn, System};
use crate::Result;
use crate::procs::{ChildGuard, free_port};

/// The JetStream stream every workload writes to; its subjects are `ev.<stream>`.
const STREAM: &str = "EV";

/// A nats-server binary and what it supports.
#[derive(Clone, Debug)]
pub struct NatsBinary {
    /// Path of the executable.
    pub path: PathBuf,
    /// Its version, e.g. `2.15.1`.
    pub version: String,
}

impl NatsBinary {
    /// Probes `path --version`.
    pub fn probe(path: &Path) -> Result<Self> {
        let output = std::process::Command::new(path)
            .arg("--version")
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let version = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix('v'))
            .ok_or_else(|| format!("{}: unexpected --version output {text:?}", path.display()))?
            .to_owned();
        Ok(Self { path: path.to_owned(), version })
    }

    /// Whether the server knows `sync_interval` (2.10 and later).
    pub fn supports_sync_always(&self) -> bool {
        let mut parts = self.version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (2, 10)
    }
}

/// A nats-server owned by the harness, with stream `EV` created.
pub struct Nats {
    process: ChildGuard,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Nats {
    /// Starts `binary` with JetStream on a free port; `sync_always` sets `sync_interval: always`.
    pub async fn start(binary: &NatsBinary, sync_always: bool) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("peer-bench-nats-").tempdir()?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let sync = if sync_always { "  sync_interval: always\n" } else { "" };
        let config = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n  max_file_store: 64GB\n{sync}}}\n",
            data.path().join("js").display().to_string()
        );
        let config_path = data.path().join("nats.conf");
        std::fs::write(&config_path, config)?;
        let mut process = ChildGuard::spawn(
            "nats-server",
            &binary.path,
            &["-c".into(), config_path.display().to_string()],
        )?;
        process.wait_for_port(addr, Duration::from_secs(10)).await?;
        let nats = Self { process, addr, _data: data };
        let client = async_nats::connect(nats.addr.to_string()).await?;
        let js = async_nats::jetstream::new(client);
        js.create_stream(Config {
            name: STREAM.into(),
            subjects: vec!["ev.>".into()],
            storage: StorageType::File,
            max_consumers: -1,
            ..Default::default()
        })
        .await?;
        Ok(nats)
    }
}

impl System for Nats {
    type Conn = NatsConn;

    async fn connect(&self) -> Result<NatsConn> {
        let client = async_nats::connect(self.addr.to_string()).await?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(60))
            .max_ack_inflight(20_000)
            .build(client.clone());
        Ok(NatsConn { client, js })
    }

    async fn stop(self) {
        self.process.stop().await;
    }
}

/// One NATS connection with its JetStream context.
#[derive(Clone)]
pub struct NatsConn {
    client: async_nats::Client,
    js: Context,
}

/// The subject and the stream sequence of its last message (0: none yet).
pub struct NatsOcc {
    subject: String,
    last: u64,
}

fn subject(stream: &str) -> String {
    format!("ev.{stream}")
}

impl NatsConn {
    /// Reads `expected` messages through an ordered pull consumer with `filter` (empty: all), checking
    /// per-subject order.
    async fn read(&self, filter: String, expected: u64) -> Result<u64> {
        let stream = self.js.get_stream(STREAM).await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let name = consumer.cached_info().name.clone();
        let mut messages = consumer.messages().await?;
        let mut order = crate::workloads::OrderCheck::default();
        let mut read = 0;
        let result = async {
            while read < expected {
                let Some(message) = messages.next().await else { break };
                let message = message?;
                let info = message.info()?;
                order.check(message.subject.as_str(), info.stream_sequence)?;
                read += 1;
            }
            Ok::<_, crate::Error>(read)
        }
        .await;
        drop(messages);
        // Ephemeral consumers linger until their inactivity threshold; W1 creates one per stream.
        let _ = stream.delete_consumer(&name).await;
        result
    }
}

impl Conn for NatsConn {
    type Occ = NatsOcc;

    async fn append_batch(&self, stream: &str, _first: u64, count: u64, payload: &Bytes) -> Result<()> {
        let subject = subject(stream);
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            acks.push(self.js.publish(subject.clone(), payload.clone()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    async fn read_stream(&self, stream: &str, expected: u64) -> Result<u64> {
        self.read(subject(stream), expected).await
    }

    async fn read_space(&self, expected: u64) -> Result<u64> {
        self.read(String::new(), expected).await
    }

    fn occ_start(&self, stream: &str) -> NatsOcc {
        NatsOcc { subject: subject(stream), last: 0 }
    }

    async fn append_expected(&self, occ: &mut NatsOcc, payload: &Bytes) -> Result<()> {
        let publish =
            PublishMessage::build().payload(payload.clone()).expected_last_subject_sequence(occ.last);
        let ack = self.js.send_publish(occ.subject.clone(), publish).await?.await?;
        occ.last = ack.sequence;
        Ok(())
    }

    async fn watch(&self, stream: &str, seen: mpsc::Sender<(u64, Instant)>) -> Result<JoinHandle<()>> {
        let consumer = self
            .js
            .get_stream(STREAM)
            .await?
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject(stream),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        Ok(tokio::spawn(async move {
            let mut count = 0;
            while let Some(Ok(_message)) = messages.next().await {
                count += 1;
                if seen.send((count, Instant::now())).await.is_err() {
                    return;
                }
            }
        }))
    }

    async fn close(self) {
        let _ = self.client.drain().await;
    }
}
