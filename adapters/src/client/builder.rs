//! [`ClientBuilder`] and [`connect`]: a client in one line, every setting optional.

use std::sync::Arc;
use std::time::Duration;

use streamkit_proto::wire::Codec;

use super::{Client, ClientOptions, Error, ErrorKind, Result, RetryPolicy, TokenSource, static_token};
#[cfg(feature = "server")]
use crate::engine::EngineHandle;
use crate::runtime::{Runtime, default_runtime};

/// Connects to the server at `url` (`ws://host:port` or `wss://…`; `/streamz` is appended) with a
/// fixed token, on the runtime the client runs in (tokio inside a tokio runtime, else smol), with
/// default settings: `Client::builder().token(token).connect(url)`.
///
/// ```
/// # use std::time::Duration;
/// # use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
/// # use streamkit::server::{ServerConfig, start};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let runtime = streamkit::runtime::default_runtime().ok_or("no runtime")?;
/// # let config = ServerConfig::memory("127.0.0.1:0".parse()?, JwtVerifier::hs256(b"doc secret")?);
/// # let server = start(runtime, config).await?;
/// # let url = server.url();
/// # let token = TokenSigner::hs256(b"doc secret")?.sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60)))?;
/// let client = streamkit::connect(url, token).await?;
/// let store = streamkit::Uuid::new_v4();
/// let status = client.publish(store, "orders", "order-1", "created", Default::default()).await?;
/// assert_eq!(status.last_sequence, 1);
/// # client.close().await;
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
pub async fn connect(url: impl Into<String>, token: impl Into<String>) -> Result<Client> {
    Client::builder().token(token).connect(url).await
}

/// Settings of a [`Client`] before it connects; from [`Client::builder`]. Only the token is needed for
/// a server that checks tokens; everything else has a default ([`ClientOptions::default`], and the
/// runtime the builder is called in).
#[must_use = "a builder does nothing until `connect` is called"]
#[derive(Default)]
pub struct ClientBuilder {
    runtime: Option<Arc<dyn Runtime>>,
    tokens: Option<Arc<dyn TokenSource>>,
    options: ClientOptions,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("ClientBuilder")
            .field("runtime", &self.runtime.as_ref().map(|runtime| runtime.name()))
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Presents `token` (a JWT) on every dial.
    pub fn token(self, token: impl Into<String>) -> Self {
        self.token_source(static_token(token))
    }

    /// Asks `source` for the token of every dial (e.g. a closure that refreshes an expiring token).
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.tokens = Some(Arc::new(source));
        self
    }

    /// Runs the client on `runtime` instead of the one found where the client is built.
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Speaks `codec`: [`Codec::Json`] (default, what Go servers speak) or [`Codec::Cbor`].
    pub fn codec(mut self, codec: Codec) -> Self {
        self.options.codec = codec;
        self
    }

    /// Retries the opening of operations with `retry` ([`RetryPolicy::default`]: Go's).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.options.retry = retry;
        self
    }

    /// Gives one dial (resolution, TCP, TLS and the WebSocket handshake) at most `timeout` (10 s).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.options.dial_timeout = timeout;
        self
    }

    /// Uses `config` for `wss://` (custom root certificates, a client certificate) instead of the
    /// Mozilla roots.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<futures_rustls::rustls::ClientConfig>) -> Self {
        self.options.tls = Some(config);
        self
    }

    /// Calls `listener` each time the client connects again after losing its connection.
    pub fn on_reconnect(mut self, listener: impl Fn() + Send + Sync + 'static) -> Self {
        self.options.hooks = self.options.hooks.on_reconnect(listener);
        self
    }

    /// Calls `callback` with the error of each failed dial (e.g. to drop a cached token).
    pub fn on_dial_failure(mut self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.options.hooks = self.options.hooks.on_dial_failure(callback);
        self
    }

    /// Checks the connection every `interval` and redials in the background when it is lost
    /// ([`ClientOptions::health_check`]).
    pub fn health_check(mut self, interval: Duration) -> Self {
        self.options.health_check = Some(interval);
        self
    }

    /// Replaces every setting but the runtime and the token with `options`.
    pub fn options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    /// Connects to `url` (`ws://host:port`; `/streamz` is appended). The first dial happens here, with
    /// the retry policy for transient failures, so a wrong address or a refused token is reported at
    /// once.
    pub async fn connect(self, url: impl Into<String>) -> Result<Client> {
        let client = self.connect_lazy(url)?;
        client.dial_now().await?;
        Ok(client)
    }

    /// Like [`connect`](Self::connect) without dialing: the first operation dials.
    pub fn connect_lazy(self, url: impl Into<String>) -> Result<Client> {
        let runtime = runtime_or_default(self.runtime)?;
        let tokens = self.tokens.unwrap_or_else(|| Arc::new(static_token(String::new())));
        Ok(Client::connect_lazy_shared(runtime, url.into(), tokens, self.options))
    }

    /// A client of the server whose engine is `engine`, in the same process (see
    /// [`Client::in_process`]); the token is not used.
    #[cfg(feature = "server")]
    pub async fn in_process(self, engine: &EngineHandle) -> Result<Client> {
        let runtime = runtime_or_default(self.runtime)?;
        Client::in_process_with(runtime, engine, self.options).await
    }
}

fn runtime_or_default(runtime: Option<Arc<dyn Runtime>>) -> Result<Arc<dyn Runtime>> {
    runtime.or_else(default_runtime).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidConfig,
            "no async runtime: build the client inside a tokio runtime, enable the smol feature, or \
             pass one with ClientBuilder::runtime",
        )
    })
}
