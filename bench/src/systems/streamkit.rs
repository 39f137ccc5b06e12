//! streamkit, served in this process through the library (embedded redb stores in a temporary
//! directory, a random loopback port, HS256 JWTs) and reached over WebSocket (JSON or CBOR) or
//! in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::client::{Client, ClientOptions, SubscribeOptions, static_token};
use streamkit::core::api::{ConsumeSegment, ConsumeSpace, Record};
use streamkit::core::wire::Codec;
use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::server::{Durability, RunningServer, ServerConfig, start};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{Conn, SPACE, System};
use crate::Result;

/// How the harness reaches the streamkit server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket, JSON frames (what Go speaks).
    WsJson,
    /// WebSocket, CBOR frames.
    WsCbor,
    /// `Client::in_process`: no socket, no encoding.
    InProcess,
}

impl Transport {
    /// Short name for tables.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WsJson => "ws-json",
            Transport::WsCbor => "ws-cbor",
            Transport::InProcess => "in-process",
        }
    }
}

/// A streamkit server running in this process.
pub struct Streamkit {
    server: RunningServer,
    runtime: Arc<dyn Runtime>,
    transport: Transport,
    url: String,
    token: String,
    store: Uuid,
    _data: tempfile::TempDir,
}

impl Streamkit {
    /// Starts a server with `durability`, its data in a new temporary directory, with the default
    /// number of engine shards.
    pub async fn start(transport: Transport, durability: Durability) -> Result<Self> {
        Self::start_with_shards(transport, durability, None).await
    }

    /// Starts a server like [`start`](Self::start), with `shards` engine shards (`None`: the default).
    pub async fn start_with_shards(
        transport: Transport,
        durability: Durability,
        shards: Option<usize>,
    ) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("peer-bench-streamkit-").tempdir()?;
        let secret = Uuid::new_v4().simple().to_string();
        let verifier = JwtVerifier::hs256(secret.as_bytes())?;
        let mut config = ServerConfig::embedded("127.0.0.1:0".parse()?, verifier, data.path());
        config.durability = durability;
        if let Some(shards) = shards {
            config.shards = shards;
        }
        let runtime: Arc<dyn Runtime> =
            Arc::new(TokioRuntime::try_current().ok_or("peer-bench must run inside tokio")?);
        let server = start(runtime.clone(), config).await?;
        let token = TokenSigner::hs256(secret.as_bytes())?
            .sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(24 * 3600)))?;
        let url = format!("ws://{}", server.local_addr());
        Ok(Self { server, runtime, transport, url, token, store: Uuid::new_v4(), _data: data })
    }
}

impl System for Streamkit {
    type Conn = StreamkitConn;

    async fn connect(&self) -> Result<StreamkitConn> {
        let client = match self.transport {
            Transport::InProcess => Client::in_process(self.runtime.clone(), self.server.engine()).await?,
            Transport::WsJson | Transport::WsCbor => {
                let codec = if self.transport == Transport::WsCbor { Codec::Cbor } else { Codec::Json };
                let options = ClientOptions::default().with_codec(codec);
                Client::connect(
                    self.runtime.clone(),
                    self.url.clone(),
                    static_token(self.token.clone()),
                    options,
                )
                .await?
            }
        };
        Ok(StreamkitConn { client, store: self.store })
    }

    async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// One streamkit client connection.
#[derive(Clone)]
pub struct StreamkitConn {
    client: Client,
    store: Uuid,
}

/// The next sequence of one segment.
pub struct StreamkitOcc {
    segment: String,
    next: u64,
}

impl StreamkitConn {
    /// The same connection, writing to and reading from `store`.
    pub fn for_store(&self, store: Uuid) -> Self {
        Self { client: self.client.clone(), store }
    }

    /// Produces `records` to `segment` and waits for the end of its acknowledgements.
    async fn produce(&self, segment: &str, records: Vec<Record>) -> Result<()> {
        let mut statuses =
            self.client.produce(self.store, SPACE, segment.to_owned(), futures_util::stream::iter(records));
        while let Some(status) = statuses.next().await {
            status?;
        }
        Ok(())
    }
}

impl Conn for StreamkitConn {
    type Occ = StreamkitOcc;

    async fn append_batch(&self, stream: &str, first: u64, count: u64, payload: &Bytes) -> Result<()> {
        let records = (first..first + count).map(|seq| Record::new(seq, payload.to_vec())).collect();
        self.produce(stream, records).await
    }

    async fn read_stream(&self, stream: &str, expected: u64) -> Result<u64> {
        let request = ConsumeSegment { space: SPACE.into(), segment: stream.into(), ..Default::default() };
        let mut entries = self.client.consume_segment(self.store, request);
        let mut read = 0;
        while read < expected {
            let Some(entry) = entries.next().await else { break };
            let entry = entry?;
            if entry.sequence != read + 1 {
                return Err(
                    format!("{stream}: expected sequence {}, got {}", read + 1, entry.sequence).into()
                );
            }
            read += 1;
        }
        Ok(read)
    }

    async fn read_space(&self, expected: u64) -> Result<u64> {
        let request = ConsumeSpace { space: SPACE.into(), ..Default::default() };
        let mut entries = self.client.consume_space(self.store, request);
        let mut order = crate::workloads::OrderCheck::default();
        let mut read = 0;
        while read < expected {
            let Some(entry) = entries.next().await else { break };
            let entry = entry?;
            order.check(&entry.segment, entry.sequence)?;
            read += 1;
        }
        Ok(read)
    }

    fn occ_start(&self, stream: &str) -> StreamkitOcc {
        StreamkitOcc { segment: stream.to_owned(), next: 1 }
    }

    async fn append_expected(&self, occ: &mut StreamkitOcc, payload: &Bytes) -> Result<()> {
        self.produce(&occ.segment, vec![Record::new(occ.next, payload.to_vec())]).await?;
        occ.next += 1;
        Ok(())
    }

    async fn watch(&self, stream: &str, seen: mpsc::Sender<(u64, Instant)>) -> Result<JoinHandle<()>> {
        let mut statuses =
            self.client.subscribe_segment(self.store, SPACE, stream, SubscribeOptions::default()).await?;
        Ok(tokio::spawn(async move {
            while let Some(Ok(status)) = statuses.next().await {
                if seen.send((status.last_sequence, Instant::now())).await.is_err() {
                    return;
                }
            }
        }))
    }

    async fn close(self) {
        self.client.close().await;
    }
}
